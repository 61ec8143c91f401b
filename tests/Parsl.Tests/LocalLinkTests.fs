module Parsl.Tests.LocalLinkTests

// The local link's own threads (src/Parsl.Node/Node/HighThroughput/LocalLink.fs): the send flusher that writes what a slow
// peer could not take at once, and the reader. Real sockets in the abstract namespace, in this process. Checked:
// frames reach a slow reader whole and in order across several flusher episodes, `Close` leaves no flusher running
// (on .NET a socket's disposal already waits for a poll in progress, so this holds with or without the join: it
// pins the behaviour), `CloseAndJoin` returns only after the reader has finished.

open System
open System.Threading
open Expecto
open Parsl.Node.HighThroughput

let private limit = TimeSpan.FromSeconds 30.

/// A connected pair: a Link on one end, the raw accepted socket (blocking, read by the test) on the other.
let private pair () =
    let name = "parsl-net-test-link-" + Guid.NewGuid().ToString("N")
    use listener = LocalSocket.listen name 1
    let client = LocalSocket.connect name
    let server = listener.Accept()
    server.Blocking <- true
    Link client, server

/// Reads one frame from a blocking socket.
let private readFrame (s: Net.Sockets.Socket) =
    let exactly n =
        let b = Array.zeroCreate<byte> n
        let mutable got = 0
        while got < n do
            let r = s.Receive(b, got, n - got, Net.Sockets.SocketFlags.None)
            if r <= 0 then failwith "the link closed early"
            got <- got + r
        b
    exactly (BitConverter.ToInt32(exactly 4, 0))

/// A frame far larger than a local socket's buffer, so that a send leaves a backlog for a flusher.
let private big (tag: byte) = Array.create (4 * 1024 * 1024) tag

let tests =
    testList "Local link threads" [
        test "frames to a slow peer arrive whole and in order, over several flusher episodes" {
            let link, peer = pair ()
            try
                for round in 0uy .. 2uy do
                    link.Send(big round)
                    link.Send [| round |]
                    Expect.isTrue link.FlusherRunning "the peer is not reading: a flusher writes the backlog"
                    let first = readFrame peer
                    Expect.equal first.Length (4 * 1024 * 1024) "the big frame, whole"
                    Expect.isTrue (first |> Array.forall ((=) round)) "its bytes"
                    Expect.sequenceEqual (readFrame peer) [| round |] "then the small one"
            finally
                link.Close()
                peer.Dispose()
        }

        test "Close leaves no send flusher running" {
            let link, peer = pair ()
            try
                link.Send(big 1uy)
                Expect.isTrue link.FlusherRunning "a flusher runs while the peer does not read"
                link.Close()
                Expect.isFalse link.FlusherRunning "joined by Close"
            finally
                peer.Dispose()
        }

        test "CloseAndJoin returns only once the reader's handler has finished" {
            let link, peer = pair ()
            let inside = new ManualResetEventSlim()
            let release = new ManualResetEventSlim()
            let mutable finished = false
            try
                link.StartReader("test-link-reader", fun () ->
                    inside.Set()
                    // Held here until the closer has called Close: a closer that did not join would return now.
                    release.Wait limit |> ignore
                    link.ReadAvailable ignore |> ignore
                    Volatile.Write(&finished, true))
                peer.Send(Frames.encode [| 7uy |]) |> ignore
                Expect.isTrue (inside.Wait limit) "the reader is in its handler"
                let mutable finishedWhenReturned = false
                let closer = Thread((fun () -> link.CloseAndJoin(); finishedWhenReturned <- Volatile.Read(&finished)), IsBackground = true)
                closer.Start()
                let deadline = DateTime.UtcNow + limit
                while not link.IsClosed do
                    if DateTime.UtcNow > deadline then failwith "the closer never closed the link"
                    Thread.Yield() |> ignore
                release.Set()
                Expect.isTrue (closer.Join limit) "CloseAndJoin returned"
                Expect.isTrue finishedWhenReturned "the reader's handler had finished when CloseAndJoin returned"
                Expect.isTrue link.ReaderEnded "no reader left"
            finally
                release.Set()
                peer.Dispose()
        }
    ]
