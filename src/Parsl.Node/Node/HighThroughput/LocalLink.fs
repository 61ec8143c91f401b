namespace Parsl.Node.HighThroughput

open System
open System.Collections.Generic
open System.IO
open System.Net.Sockets
open System.Threading

/// Length-prefixed frames over a local socket (interchange ↔ manager on one host, manager ↔ worker).
[<RequireQualifiedAccess>]
module Frames =
    /// One frame as bytes: a 4-byte length, then the body.
    let encode (bytes: byte[]) =
        let frame = Array.zeroCreate<byte> (4 + bytes.Length)
        BitConverter.TryWriteBytes(Span<byte>(frame, 0, 4), bytes.Length) |> ignore
        Buffer.BlockCopy(bytes, 0, frame, 4, bytes.Length)
        frame

    /// Writes one frame in one write (not flushed).
    let write (s: Stream) (bytes: byte[]) =
        let frame = encode bytes
        s.Write(frame, 0, frame.Length)

    let private readExactly (s: Stream) (buffer: byte[]) =
        let mutable got = 0
        while got < buffer.Length && (let n = s.Read(buffer, got, buffer.Length - got) in (if n > 0 then got <- got + n); n > 0) do
            ()
        got = buffer.Length

    /// Reads one frame; None at end of stream.
    let read (s: Stream) : byte[] option =
        let header = Array.zeroCreate<byte> 4
        if not (readExactly s header) then None
        else
            let body = Array.zeroCreate<byte> (BitConverter.ToInt32(header, 0))
            if readExactly s body then Some body else None

/// Stream sockets in Linux's abstract namespace (a name with a leading NUL: no file to clean up, nothing left
/// behind by a process that was killed), and who is at the other end, from the kernel.
[<RequireQualifiedAccess>]
module LocalSocket =
    let endpoint (name: string) = UnixDomainSocketEndPoint("\000" + name)

    let private make () = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)

    /// A listening socket bound to the name.
    let listen (name: string) (backlog: int) =
        let s = make ()
        try
            s.Bind(endpoint name)
            s.Listen backlog
            s
        with _ ->
            s.Dispose()
            reraise ()

    /// A blocking connection to the name; throws SocketException when nobody listens there (another host, or
    /// the listener is gone).
    let connect (name: string) =
        let s = make ()
        try
            s.Connect(endpoint name)
            s
        with _ ->
            s.Dispose()
            reraise ()

    [<System.Runtime.InteropServices.DllImport("libc", EntryPoint = "socket", SetLastError = true)>]
    extern int private sys_socket(int domain, int kind, int protocol)

    [<System.Runtime.InteropServices.DllImport("libc", EntryPoint = "connect", SetLastError = true)>]
    extern int private sys_connect(int fd, byte[] address, int length)

    [<System.Runtime.InteropServices.DllImport("libc", EntryPoint = "close")>]
    extern int private sys_close(int fd)

    /// A connection to the name as a plain stream, made with two system calls: a worker connects once, on its way
    /// to its first result, and `Socket`'s own start-up (its assemblies, its engine) took about 20 ms there.
    /// Throws IOException when nobody listens there.
    let connectStream (name: string) : Stream =
        let path = Text.Encoding.UTF8.GetBytes name
        // struct sockaddr_un: the family (AF_UNIX), then a leading NUL (the abstract namespace) and the name.
        let address = Array.zeroCreate<byte> (3 + path.Length)
        address[0] <- 1uy
        Buffer.BlockCopy(path, 0, address, 3, path.Length)
        let fd = sys_socket (1, 1 ||| 0x80000 (* SOCK_STREAM | SOCK_CLOEXEC *), 0)
        if fd < 0 then raise (IOException(sprintf "socket() failed (errno %d)" (System.Runtime.InteropServices.Marshal.GetLastPInvokeError())))
        if sys_connect (fd, address, address.Length) <> 0 then
            let errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError()
            sys_close fd |> ignore
            raise (IOException(sprintf "cannot connect to %s (errno %d)" name errno))
        new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(nativeint fd, true), FileAccess.ReadWrite, 1) :> Stream

    /// The process id and effective user id of the peer when it connected (SO_PEERCRED); (-1, -1) if unknown.
    let peer (conn: Socket) =
        try
            let cred = Array.zeroCreate<byte> 12 // struct ucred { pid; uid; gid }
            if conn.GetRawSocketOption(1, 17, Span<byte>(cred)) >= 8 then BitConverter.ToInt32(cred, 0), BitConverter.ToInt32(cred, 4)
            else -1, -1
        with _ -> -1, -1

    /// This process's effective user id (from /proc; -2 if unknown, which matches no peer).
    let uid =
        lazy
            (try
                File.ReadLines "/proc/self/status"
                |> Seq.find (fun l -> l.StartsWith "Uid:")
                |> fun l -> int (l.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries)[2])
             with _ -> -2)

    let private parentOf (pid: int) =
        try
            let stat = File.ReadAllText("/proc/" + string pid + "/stat")
            int ((stat.Substring(stat.LastIndexOf ')' + 2).Split ' ')[1])
        with _ -> -1

    /// `pid`, its parent, and so on up (at most 16 generations up, not past init): to check a peer's descent once,
    /// away from the code that owns the list of processes it may descend from.
    let lineage (pid: int) =
        let rec up p depth acc =
            if p <= 1 || depth >= 16 then List.rev (p :: acc)
            else up (parentOf p) (depth + 1) (p :: acc)
        up pid 0 []

    /// Whether `pid` is `root` or a descendant of it (within 16 generations).
    let startedBy (root: int) (pid: int) =
        let mutable p = pid
        let mutable depth = 0
        while p > 1 && p <> root && depth < 16 do
            p <- parentOf p
            depth <- depth + 1
        p = root

/// One local connection: frames in as they arrive (read by a poller or by a reader thread of its own), and frames
/// out without ever blocking the sender. A send the socket cannot take at once (the peer is slow to read) waits in
/// order in a backlog that a short-lived helper thread writes out; two processes sending to each other with full
/// buffers therefore never deadlock. A frame whose length is negative or above `MaxFrame` ends the connection
/// (a peer that is not yet trusted cannot make this process allocate gigabytes). The link owns its threads: `Close`
/// joins the flusher (which takes nothing but the link's own lock), `CloseAndJoin` the reader too.
[<Sealed; AllowNullLiteral>]
type Link(socket: Socket) =
    do socket.Blocking <- false
    let mutable buffer = Array.zeroCreate<byte> 65536
    let mutable filled = 0
    let gate = obj ()
    let backlog = Queue<byte[]>()
    // Bytes of the backlog's first frame already sent.
    let mutable headSent = 0
    let mutable closed = false
    // The threads this link started (null until then): joined, never left running after the link is closed.
    let mutable flusherThread: Thread = null
    let mutable readerThread: Thread = null
    let joinUnlessSelf (t: Thread) =
        if not (isNull t) && not (obj.ReferenceEquals(t, Thread.CurrentThread)) then t.Join()

    /// Writes the backlog as the socket takes it (under `gate`); true once it is empty or the link is dead.
    let writeBacklog () =
        let mutable go = true
        while go && backlog.Count > 0 do
            let frame = backlog.Peek()
            let mutable err = SocketError.Success
            let n = (try socket.Send(frame, headSent, frame.Length - headSent, SocketFlags.None, &err) with :? ObjectDisposedException -> err <- SocketError.Shutdown; 0)
            if err = SocketError.Success || err = SocketError.WouldBlock then
                headSent <- headSent + max 0 n
                if headSent = frame.Length then
                    backlog.Dequeue() |> ignore
                    headSent <- 0
                else go <- false
            else
                // The peer is gone: its reader sees the end of the connection and handles it.
                backlog.Clear()
                headSent <- 0
                go <- false
        backlog.Count = 0

    let flusher () =
        let mutable go = true
        while go do
            let writable = (try closed || socket.Poll(1_000_000, SelectMode.SelectWrite) with _ -> true)
            if writable then
                lock gate (fun () ->
                    if closed || writeBacklog () then
                        backlog.Clear()
                        headSent <- 0
                        go <- false)

    member _.Socket = socket

    /// What the peer said it is (set by the owner once it knows, e.g. a manager's id).
    member val Name = "" with get, set

    /// The largest frame accepted from the peer (bytes). Default: no limit beyond the format's.
    member val MaxFrame = Int32.MaxValue - 4 with get, set

    /// Sends one frame. Never blocks; frames leave in the order they were sent.
    member _.Send(payload: byte[]) =
        let frame = Frames.encode payload
        lock gate (fun () ->
            if not closed then
                let idle = backlog.Count = 0
                backlog.Enqueue frame
                if idle && not (writeBacklog ()) then
                    // A previous flusher emptied the backlog and has let go of `gate` for the last time: this join
                    // ends at once, and no flusher is ever left unjoined.
                    joinUnlessSelf flusherThread
                    flusherThread <- Thread(flusher, IsBackground = true, Name = "local-link-flush")
                    flusherThread.Start())

    /// Reads what has arrived and hands each whole frame to `onFrame`; false once the peer has closed.
    member this.ReadAvailable(onFrame: byte[] -> unit) : bool =
        if filled = buffer.Length then
            let bigger = Array.zeroCreate<byte> (buffer.Length * 2)
            Buffer.BlockCopy(buffer, 0, bigger, 0, filled)
            buffer <- bigger
        let mutable err = SocketError.Success
        let n = (try socket.Receive(buffer, filled, buffer.Length - filled, SocketFlags.None, &err) with :? ObjectDisposedException -> 0)
        if n > 0 then
            filled <- filled + n
            let mutable at = 0
            let mutable go = true
            let mutable corrupt = false
            while go && filled - at >= 4 do
                let size = BitConverter.ToInt32(buffer, at)
                if size < 0 || size > this.MaxFrame then
                    corrupt <- true
                    go <- false
                elif filled - at - 4 >= size then
                    let frame = Array.sub buffer (at + 4) size
                    at <- at + 4 + size
                    onFrame frame
                else
                    go <- false
                    // A frame larger than the buffer: make room for all of it.
                    if 4 + size > buffer.Length then
                        let bigger = Array.zeroCreate<byte> (4 + size)
                        Buffer.BlockCopy(buffer, at, bigger, 0, filled - at)
                        buffer <- bigger
                        filled <- filled - at
                        at <- 0
            if at > 0 then
                Buffer.BlockCopy(buffer, at, buffer, 0, filled - at)
                filled <- filled - at
            not corrupt
        else
            // Nothing yet (a wake-up with no data) is not the end; an error or a zero-byte read is.
            n = 0 && err = SocketError.WouldBlock

    /// Reads until the peer's end of the connection (for a peer process that has exited), waiting at most
    /// `timeout` for more.
    member this.ReadToEnd(onFrame: byte[] -> unit, timeout: TimeSpan) =
        let deadline = DateTime.UtcNow + timeout
        let mutable go = true
        while go do
            let left = deadline - DateTime.UtcNow
            go <-
                left > TimeSpan.Zero
                && (try socket.Poll(int left.TotalMicroseconds, SelectMode.SelectRead) with _ -> false)
                && this.ReadAvailable onFrame

    /// Calls `onReadable` on a thread of its own each time bytes (or the end of the connection) arrive, until the
    /// link is closed: one wake-up and two system calls per message, where a poller also polls every other socket
    /// it has, twice. `onReadable` reads (under its owner's lock) and closes the link at the end.
    member this.StartReader(name: string, onReadable: unit -> unit) =
        let run () =
            let mutable go = true
            while go && not (Volatile.Read &closed) do
                // Close shuts the socket down first, which ends this wait (closing alone would not).
                let ready = (try socket.Poll(-1, SelectMode.SelectRead) with _ -> false)
                if not ready || Volatile.Read &closed then go <- false
                else
                    try
                        onReadable ()
                    with _ ->
                        // A handler that failed (a frame that did not decode) must not take the process down: the
                        // connection ends, and the owner, reading once more, sees its end and cleans up as for a
                        // peer that went away.
                        this.Close()
                        try onReadable () with _ -> ()
                        go <- false
        let t = Thread(run, IsBackground = true, Name = name)
        readerThread <- t
        t.Start()

    /// Whether the reader started by `StartReader` has ended (true when none was started).
    member _.ReaderEnded = isNull readerThread || not readerThread.IsAlive

    /// Whether `Close` has been called (for tests).
    member internal _.IsClosed = Volatile.Read &closed

    /// Whether a send flusher is running now (for tests).
    member internal _.FlusherRunning = let t = flusherThread in not (isNull t) && t.IsAlive

    /// Closes the connection; sends still in the backlog are dropped. Waits for the send flusher, if one runs, to end
    /// (at once: the shutdown wakes its wait); not for the reader, which may be the caller or wait on the caller's lock.
    member _.Close() =
        let flusher = lock gate (fun () -> Volatile.Write(&closed, true); flusherThread)
        try socket.Shutdown SocketShutdown.Both with _ -> ()
        socket.Dispose()
        joinUnlessSelf flusher

    /// Closes the connection and waits for its reader thread to end too. For an owner that holds no lock the reader's
    /// handler takes (called from the reader itself, it does not wait for itself).
    member this.CloseAndJoin() =
        this.Close()
        joinUnlessSelf readerThread

    /// Stops sending (the peer reads to the end, then sees the connection end); reads go on.
    member _.ShutdownSend() =
        try socket.Shutdown SocketShutdown.Send with _ -> ()
