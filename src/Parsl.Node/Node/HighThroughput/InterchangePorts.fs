namespace Parsl.Node.HighThroughput

open System

/// The interchange listens on several ROUTER sockets, one port each (`HtexOptions.InterchangeSockets`), and each
/// manager connects to one of them, chosen from its id. Why several: NetMQ's ROUTER finds the pipe of a peer that had
/// gone quiet with a scan of every connected peer's pipe (`FairQueueing.Activated`), so with 10,000 managers on one
/// socket nearly every heartbeat and result batch costs a scan of 10,000; over K sockets it is 10,000 / K.
///
/// The manager's command line carries every port in one address, `tcp://HOST:P1,P2,...,PK` (one port is the address
/// of old), and the manager picks one. Pure: no IO.
[<RequireQualifiedAccess>]
module InterchangePorts =
    /// `tcp://HOST:P1,P2,...` for these ports (at least one).
    let format (host: string) (ports: int list) =
        sprintf "tcp://%s:%s" host (String.Join(",", ports))

    /// The host part and the ports of `tcp://HOST:P1,P2,...`, or why it is not such an address.
    let parse (address: string) : Result<string * int list, string> =
        let bad () = Error(sprintf "'%s' is not tcp://HOST:PORT or tcp://HOST:PORT,PORT,..." address)
        if isNull address || not (address.StartsWith "tcp://") then bad ()
        else
            let colon = address.LastIndexOf ':'
            if colon <= "tcp://".Length then bad ()
            else
                let host = address.Substring("tcp://".Length, colon - "tcp://".Length)
                let ports = address.Substring(colon + 1).Split ','
                let parsed =
                    ports
                    |> Array.map (fun p ->
                        match Int32.TryParse p with
                        | true, n when n >= 1 && n <= 65535 && p.Trim() = p -> Some n
                        | _ -> None)
                if host = "" || parsed |> Array.exists Option.isNone then bad ()
                else Ok(host, parsed |> Array.choose id |> List.ofArray)

    /// A stable hash of the manager's id (FNV-1a over its UTF-8 bytes): the same on every node and in every run,
    /// unlike `String.GetHashCode`.
    let private hash (managerId: string) =
        let mutable h = 2166136261u
        for b in Text.Encoding.UTF8.GetBytes managerId do
            h <- (h ^^^ uint32 b) * 16777619u
        h

    /// Which of `count` sockets a manager with this id connects to (0-based): spread evenly over ids.
    let choose (managerId: string) (count: int) =
        if count <= 1 then 0 else int (hash managerId % uint32 count)

    /// The one address (`tcp://HOST:PORT`) a manager with this id connects to, from an address listing every port.
    let pick (managerId: string) (address: string) : Result<string, string> =
        parse address
        |> Result.map (fun (host, ports) -> format host [ ports[choose managerId ports.Length] ])
