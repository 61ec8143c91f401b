namespace Parsl.Executors.WorkerLink

open System
open System.Collections.Generic
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks

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
