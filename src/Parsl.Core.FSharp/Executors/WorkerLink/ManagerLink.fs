namespace Parsl.Executors.WorkerLink

open System
open System.Collections.Generic
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks

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

/// The IO every CCTools-style manager owns besides its loop: the listening socket, the accept loop that starts one
/// reader per connection (numbered from 1), and the ticker that drives keepalive. Started at once; `Stop`, then
/// `AbortConnections`, then `DrainAsync` end them (the manager sends `exit` to its workers in between).
[<Sealed>]
type ManagerListener
    private
    (
        listener: TcpListener,
        stopping: CancellationTokenSource,
        abortAll: CancellationTokenSource,
        accept: Task,
        ticker: Task,
        connections: List<Task>,
        connectionsLock: obj
    ) =
    /// Binds `address:port` (0 = any free port), then accepts connections, running `serve id client abort` for each
    /// (`abort` fires at the very end of a shutdown), and calls `tick` every `tickPeriod` until stopped.
    static member Start
        (address: string, port: int, serve: int -> TcpClient -> CancellationToken -> Task, tickPeriod: TimeSpan, tick: unit -> unit)
        =
        let listener = new TcpListener(ManagerRules.bindAddress address, port)
        listener.Start()
        let stopping = new CancellationTokenSource()
        let abortAll = new CancellationTokenSource()
        let connections = List<Task>()
        let connectionsLock = obj ()
        let accept =
            Task.Run(fun () ->
                task {
                    let mutable next = 0
                    try
                        while not stopping.IsCancellationRequested do
                            let! c = listener.AcceptTcpClientAsync(stopping.Token)
                            c.NoDelay <- true
                            next <- next + 1
                            // Bound before the closure: `next` is a field of this loop's state machine, read later.
                            let id = next
                            let t = Task.Run(fun () -> serve id c abortAll.Token)
                            lock connectionsLock (fun () -> connections.Add t)
                    with
                    | :? OperationCanceledException
                    | :? ObjectDisposedException
                    | :? SocketException -> ()
                }
                :> Task)
        let ticker =
            Task.Run(fun () ->
                task {
                    try
                        while not stopping.IsCancellationRequested do
                            do! Task.Delay(tickPeriod, stopping.Token)
                            tick ()
                    with :? OperationCanceledException -> ()
                }
                :> Task)
        new ManagerListener(listener, stopping, abortAll, accept, ticker, connections, connectionsLock)

    /// The port workers connect to.
    member _.Port = (listener.LocalEndpoint :?> IPEndPoint).Port

    /// Stops accepting and ticking; connections already made go on.
    member _.Stop() =
        stopping.Cancel()
        listener.Stop()

    /// Cuts every connection, joined or not (one still authenticating too).
    member _.AbortConnections() = abortAll.Cancel()

    /// Ends when every connection's reader, the accept loop and the ticker ended.
    member _.DrainAsync() : Task =
        task {
            let pending = lock connectionsLock (fun () -> connections.ToArray())
            try do! Task.WhenAll pending with _ -> ()
            try do! Task.WhenAll(accept, ticker) with _ -> ()
        }

/// Steps of a connection's reader the two managers share.
[<RequireQualifiedAccess>]
module ManagerLink =
    /// Checks the worker's password when there is one; `reject` is called with why it failed. True when it may go on.
    let authenticate (link: LineLink) (password: string option) (reject: string -> unit) : Task<bool> =
        task {
            match password with
            | Some password ->
                match! LinkAuth.manager link password with
                | None -> return true
                | Some why ->
                    reject why
                    return false
            | None -> return true
        }

    /// Asks every worker to exit, then waits (at most 5 s each) for their links to flush and close.
    let closeAll (links: LineLink seq) : Task =
        let links = Array.ofSeq links
        for l in links do
            l.SendLine "exit"
        Task.WhenAll [ for l in links -> l.CloseAsync(TimeSpan.FromSeconds 5.0) ]

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
