namespace Parsl.Executors.WorkerLink

open System
open System.Collections.Generic
open System.Net
open System.Net.Sockets

/// What the keepalive asks of one worker's link on a tick.
type KeepaliveAction =
    /// Nothing heard for longer than the timeout: the worker is lost, for this reason.
    | LoseWorker of reason: string
    /// Nothing sent for a period: send `check` so the worker (and we) know the link is alive.
    | SendCheck
    | Quiet

/// The pure decisions the Work Queue and TaskVine managers share (the two speak the same line-oriented link).
[<RequireQualifiedAccess>]
module ManagerRules =
    /// How often the ticker posts `Tick`: half the keepalive period, between 50 ms and 1 s.
    let tickPeriod (keepalivePeriod: TimeSpan) =
        TimeSpan.FromMilliseconds(max 50.0 (min 1000.0 (keepalivePeriod.TotalMilliseconds / 2.0)))

    /// What a link needs now, from when it last heard and last sent (`Environment.TickCount64` milliseconds).
    let keepalive (period: TimeSpan) (timeout: TimeSpan) (lastHeard: int64) (lastSent: int64) (now: int64) =
        if float (now - lastHeard) > timeout.TotalMilliseconds then LoseWorker(sprintf "no message for %O (KeepaliveTimeout)" timeout)
        elif float (now - lastSent) > period.TotalMilliseconds then SendCheck
        else Quiet

    /// A name a worker may send a file or directory under: relative, and never climbing out with `..`.
    let safeName (name: string) =
        not (String.IsNullOrEmpty name) && not (name.StartsWith "/") && not (name.Split('/') |> Array.contains "..")

    /// Queue order of `(priority, submission sequence)`: higher priority first, then submission order.
    let queueOrder =
        { new IComparer<struct (float * int64)> with
            member _.Compare(struct (pa, sa), struct (pb, sb)) =
                let c = compare pb pa
                if c <> 0 then c else compare sa sb }

    /// The address to bind: an IP as written, `*` or `0.0.0.0` for every interface, else the name's IPv4 address.
    let bindAddress (address: string) =
        match IPAddress.TryParse address with
        | true, ip -> ip
        | _ when address = "*" || address = "0.0.0.0" -> IPAddress.Any
        | _ -> Dns.GetHostAddresses(address) |> Array.find (fun a -> a.AddressFamily = AddressFamily.InterNetwork)

/// The tasks waiting for a worker, in queue order (higher priority first, then submission order), by id. Owned by
/// one manager's loop (not thread-safe).
[<Sealed>]
type PendingQueue() =
    let queue = SortedSet<struct (float * int64)>(ManagerRules.queueOrder)
    let queued = Dictionary<struct (float * int64), int64>()

    /// How many wait.
    member _.Count = queue.Count

    /// Queues task `id`, submitted `seq`-th with this priority.
    member _.Add(priority: float, seq: int64, id: int64) =
        let k = struct (priority, seq)
        queue.Add k |> ignore
        queued[k] <- id

    /// Takes the task submitted `seq`-th with this priority out of the queue, if it waits there.
    member _.Remove(priority: float, seq: int64) =
        let k = struct (priority, seq)
        if queued.Remove k then queue.Remove k |> ignore

    /// Offers each waiting task, in queue order, to `place` (true: it was placed, and leaves the queue) until `full ()`
    /// says no worker has room left.
    member _.Place(place: int64 -> bool, full: unit -> bool) =
        let placed = List<struct (float * int64)>()
        let mutable stop = false
        let mutable it = queue.GetEnumerator()
        while not stop && it.MoveNext() do
            let k = it.Current
            if place queued[k] then
                placed.Add k
                if full () then stop <- true
        for k in placed do
            queue.Remove k |> ignore
            queued.Remove k |> ignore
