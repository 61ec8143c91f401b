namespace Parsl.Executors.WorkerLink

open System
open System.IO
open System.Net.Sockets
open System.Text
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks

/// What a link sends: bytes as they are, or a header followed by a file's bytes read from disk (so a large file
/// never sits in memory whole).
type Outgoing =
    | Bytes of byte[]
    | FileBody of header: byte[] * path: string

/// A line-oriented link to one CCTools worker (Work Queue and TaskVine speak the same framing): text lines ended by
/// `\n`, some announcing a byte count that exactly that many raw bytes follow.
///
///   reader (one task, the link's owner)  ◀── lines, payloads ◀── worker
///   any thread ── Send(Outgoing) ──▶ queue ──▶ writer loop ──▶ worker
///
/// Reads are done by one reader at a time (the connection's reader loop); sends from any thread are queued and
/// written in order by the link's own writer loop, so a slow worker never blocks whoever sends. Every read waits
/// at most `timeout`: a worker that stops talking mid-message is cut off instead of holding the reader.
[<Sealed>]
type LineLink(client: TcpClient, lineMax: int, timeout: TimeSpan) =
    let stream = client.GetStream()
    let buffer: byte[] = Array.zeroCreate 65536
    let mutable start = 0
    let mutable count = 0
    let mutable lastHeard = Environment.TickCount64
    let mutable lastSent = Environment.TickCount64
    let outbox = Channel.CreateUnbounded<Outgoing>(UnboundedChannelOptions(SingleReader = true))
    let cts = new CancellationTokenSource()
    let remote = try string client.Client.RemoteEndPoint with _ -> "?"

    let fill () : Task<bool> =
        task {
            if start > 0 && count > 0 then Buffer.BlockCopy(buffer, start, buffer, 0, count)
            start <- 0
            use t = CancellationTokenSource.CreateLinkedTokenSource cts.Token
            t.CancelAfter timeout
            let! n =
                try stream.ReadAsync(buffer, count, buffer.Length - count, t.Token)
                with :? OperationCanceledException when not cts.IsCancellationRequested ->
                    raise (TimeoutException(sprintf "the worker at %s sent nothing for %O (the keepalive timeout)" remote timeout))
            if n > 0 then
                count <- count + n
                lastHeard <- Environment.TickCount64
            return n > 0
        }

    let writer =
        Task.Run(fun () ->
            task {
                let mutable go = true
                try
                    while go do
                        let! more = outbox.Reader.WaitToReadAsync(cts.Token)
                        if not more then go <- false
                        else
                            let mutable item = Unchecked.defaultof<Outgoing>
                            while outbox.Reader.TryRead(&item) do
                                match item with
                                | Bytes b -> do! stream.WriteAsync(b, 0, b.Length, cts.Token)
                                | FileBody(h, path) ->
                                    do! stream.WriteAsync(h, 0, h.Length, cts.Token)
                                    use f = File.OpenRead path
                                    do! f.CopyToAsync(stream, 81920, cts.Token)
                                lastSent <- Environment.TickCount64
                            do! stream.FlushAsync(cts.Token)
                with
                | :? OperationCanceledException
                | :? IOException
                | :? ObjectDisposedException
                | :? SocketException -> ()
                // A send that failed means the connection is gone: the reader sees it and reports the loss.
                try client.Client.Shutdown SocketShutdown.Both with _ -> ()
            }
            :> Task)

    /// The peer's address.
    member _.Remote = remote

    /// When the worker last sent anything (`Environment.TickCount64`).
    member _.LastHeard = lastHeard

    /// When anything was last written to the worker.
    member _.LastSent = lastSent

    /// Reads one line without its `\n`; None when the worker closed the connection. A line longer than `lineMax`
    /// raises: a real worker never sends one.
    member _.ReadLineAsync() : Task<string option> =
        task {
            let mutable result = None
            let mutable fin = false
            while not fin do
                let i = if count = 0 then -1 else Array.IndexOf(buffer, 10uy, start, count)
                if i >= 0 then
                    let len = i - start
                    let line = Encoding.UTF8.GetString(buffer, start, (if len > 0 && buffer[i - 1] = 13uy then len - 1 else len))
                    start <- i + 1
                    count <- count - len - 1
                    result <- Some line
                    fin <- true
                elif count >= lineMax then
                    raise (InvalidDataException(sprintf "the worker at %s sent a line longer than %d bytes" remote lineMax))
                else
                    let! more = fill ()
                    if not more then fin <- true
            return result
        }

    /// Copies exactly `n` raw bytes to `dest`. Raises `EndOfStreamException` if the worker closes first.
    member _.CopyBytesAsync(n: int64, dest: Stream) : Task =
        task {
            let mutable left = n
            while left > 0L do
                if count = 0 then
                    let! more = fill ()
                    if not more then raise (EndOfStreamException(sprintf "the worker at %s closed mid-payload" remote))
                let take = int (min (int64 count) left)
                do! dest.WriteAsync(buffer, start, take)
                start <- start + take
                count <- count - take
                left <- left - int64 take
        }

    /// Reads exactly `n` raw bytes (for small payloads: a task's output, a message).
    member this.ReadBytesAsync(n: int) : Task<byte[]> =
        task {
            use ms = new MemoryStream(n)
            do! this.CopyBytesAsync(int64 n, ms)
            return ms.ToArray()
        }

    /// Queues bytes to send. Never blocks; after `Close` it does nothing.
    member _.Send(o: Outgoing) = outbox.Writer.TryWrite o |> ignore

    /// Queues a line (a `\n` is added).
    member this.SendLine(line: string) = this.Send(Bytes(Encoding.UTF8.GetBytes(line + "\n")))

    /// Sends what is queued, then closes the connection; waits for the writer (at most `drain`).
    member _.CloseAsync(drain: TimeSpan) : Task =
        task {
            outbox.Writer.TryComplete() |> ignore
            let! _ = Task.WhenAny(writer, Task.Delay drain)
            cts.Cancel()
            try client.Client.Shutdown SocketShutdown.Both with _ -> ()
            client.Dispose()
            try do! writer with _ -> ()
        }

    /// Closes at once (the reader's pending read ends).
    member _.Abort() =
        outbox.Writer.TryComplete() |> ignore
        cts.Cancel()
        try client.Client.Shutdown SocketShutdown.Both with _ -> ()
        client.Dispose()

    interface IDisposable with
        member this.Dispose() = this.Abort()

/// CCTools' password authentication (`link_auth_password`), spoken the same by Work Queue and TaskVine workers
/// before anything else: each side sends `auth password sha1`, a nonce, then the SHA1 of the password and the
/// other's nonce, then `ok`. Nothing the peer sends is parsed as a worker message before this succeeds.
[<RequireQualifiedAccess>]
module LinkAuth =
    /// The line that starts password authentication, both ways.
    let ident = Parsl.Executors.WorkQueue.WqProtocol.authIdent

    /// `SHA1(password + " " + nonce)` in lower-case hex: what each side proves it holds the password with.
    let response (password: string) (nonce: string) = Parsl.Executors.WorkQueue.WqProtocol.authResponse password nonce

    /// Runs the manager's side on a fresh link: None when the worker proved it holds `password`, else why not.
    let manager (link: LineLink) (password: string) : Task<string option> =
        task {
            let read () =
                task {
                    match! link.ReadLineAsync() with
                    | Some l -> return l
                    | None -> return raise (EndOfStreamException "the worker closed the connection")
                }
            link.SendLine ident
            let! first = read ()
            if first <> ident then
                return Some "the worker did not authenticate (it has no password; give it one with --password)"
            else
                let nonce = Convert.ToHexString(Security.Cryptography.RandomNumberGenerator.GetBytes 32).ToLowerInvariant()
                link.SendLine nonce
                let! peerNonce = read ()
                link.SendLine(response password peerNonce)
                let! answer = read ()
                let expected = response password nonce
                if Security.Cryptography.CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes answer, Encoding.ASCII.GetBytes expected) then
                    link.SendLine "ok"
                    let! theirs = read ()
                    return (if theirs = "ok" then None else Some "the worker did not accept this manager's password")
                else
                    link.SendLine "failure"
                    return Some "the worker's password is wrong"
        }
