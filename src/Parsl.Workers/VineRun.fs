/// `Parsl.Workers vine-library …`: the long-lived .NET library a TaskVine worker keeps for serverless function apps
/// (a task with `provides_library`). The worker starts it with `--in-pipe-fd N --out-pipe-fd M --task-id T
/// --function-slots S --worker-pid P …`; it announces itself on the out pipe, then serves each call the worker writes
/// on the in pipe (`<task id> <function> <sandbox> <stdout file>`): the call file is in that sandbox (put there by the
/// authenticated manager through the worker), the result goes beside it. Every message is `<length>\n<bytes>`, and
/// each is followed by SIGCHLD to the worker, which is how the worker notices it without polling.
module Parsl.Workers.VineRun

open System
open System.IO
open System.Runtime.InteropServices
open Microsoft.Win32.SafeHandles

[<DllImport("libc", SetLastError = true)>]
extern int kill(int pid, int signal)

let private sigchld = 17

let private arg (argv: string[]) (name: string) =
    match Array.tryFindIndex ((=) name) argv with
    | Some i when i + 1 < argv.Length -> Some argv[i + 1]
    | _ -> None

/// Reads `<length>\n` and that many bytes; None at the end of the pipe.
let private readMessage (s: Stream) : string option =
    let sb = Text.StringBuilder()
    let mutable c = s.ReadByte()
    while c >= 0 && c <> 10 do
        sb.Append(char c) |> ignore
        c <- s.ReadByte()
    match Int32.TryParse(sb.ToString()) with
    | true, n when c = 10 && n >= 0 && n <= 65536 ->
        let buffer = Array.zeroCreate<byte> n
        let mutable got = 0
        let mutable fin = false
        while not fin && got < n do
            let k = s.Read(buffer, got, n - got)
            if k <= 0 then fin <- true else got <- got + k
        if got = n then Some(Text.Encoding.UTF8.GetString buffer) else None
    | _ -> None

let private writeMessage (s: Stream) (workerPid: int) (text: string) =
    let body = Text.Encoding.UTF8.GetBytes text
    let head = Text.Encoding.UTF8.GetBytes(sprintf "%d\n" body.Length)
    s.Write(head, 0, head.Length)
    s.Write(body, 0, body.Length)
    s.Flush()
    if workerPid > 0 then kill (workerPid, sigchld) |> ignore

/// Serves calls until the worker closes the in pipe (it does when it ends, however it ends).
let main (argv: string[]) : int =
    match arg argv "--in-pipe-fd", arg argv "--out-pipe-fd", arg argv "--task-id" with
    | Some i, Some o, Some taskId ->
        let workerPid = arg argv "--worker-pid" |> Option.map int |> Option.defaultValue 0
        use input = new FileStream(new SafeFileHandle(nativeint (int i), true), FileAccess.Read)
        use output = new FileStream(new SafeFileHandle(nativeint (int o), true), FileAccess.Write)
        // What apps print goes to stderr (the library's own log in its sandbox).
        Console.SetOut(Console.Error)
        let runner = Parsl.Workers.WqRun.LongLivedRunner()
        writeMessage output workerPid (sprintf "{\"name\":\"%s\",\"taskid\":%s,\"exec_mode\":\"direct\"}" "parsl-dotnet-library" taskId)
        let mutable go = true
        while go do
            match readMessage input with
            | None -> go <- false
            | Some call ->
                match call.Split(' ', 4) with
                | [| id; _; sandbox; _ |] when id |> Seq.forall Char.IsAsciiDigit ->
                    let outcome = runner.Run sandbox
                    if outcome <> "ok" then eprintfn "vine-library: task %s: %s" id outcome
                    writeMessage output workerPid (sprintf "%s %d" id (if outcome = "ok" then 0 else 1))
                | _ -> eprintfn "vine-library: a malformed call '%s'" call
        0
    | _ ->
        eprintfn "usage: Parsl.Workers vine-library --in-pipe-fd N --out-pipe-fd M --task-id T [--worker-pid P]"
        64
