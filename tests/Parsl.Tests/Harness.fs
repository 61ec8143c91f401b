/// Runs the daemon harnesses under tests/harness once per test run, and turns "cannot run here" into a skipped
/// test that says why.
module Parsl.Tests.Harness

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open Expecto

type Outcome =
    | Ready of string
    | Unsupported of string
    | Broken of string

/// The repository's tests/harness folder, found by walking up from the test binary.
let dir () =
    let rec up (d: DirectoryInfo) =
        if isNull d then failwith "tests/harness not found above the test binary"
        elif File.Exists(Path.Combine(d.FullName, "tests", "harness", "common.sh")) then Path.Combine(d.FullName, "tests", "harness")
        else up d.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

let private runScript (name: string) =
    let script = Path.Combine(dir (), name + ".sh")
    if not (File.Exists "/bin/bash") then Unsupported "no /bin/bash on this machine"
    else
        let psi = ProcessStartInfo("/bin/bash", [ script ])
        psi.RedirectStandardOutput <- true
        psi.RedirectStandardError <- true
        use p = Process.Start psi
        let out = p.StandardOutput.ReadToEndAsync()
        let err = p.StandardError.ReadToEndAsync()
        if not (p.WaitForExit(TimeSpan.FromMinutes 10.0)) then
            (try p.Kill true with _ -> ())
            Broken(sprintf "%s.sh did not finish within 10 minutes" name)
        else
            let lastLines (s: string) = s.Trim().Split('\n') |> Array.rev |> Array.truncate 15 |> Array.rev |> String.concat "\n"
            match p.ExitCode with
            | 0 -> Ready(out.Result.Trim())
            | 2 -> Unsupported(err.Result.Trim())
            | c -> Broken(sprintf "%s.sh exited %d:\n%s" name c (lastLines err.Result))

let private outcomes = ConcurrentDictionary<string, Lazy<Outcome>>()

/// Starts (once per run) the daemon `name` (`slurm`, `gridengine`, `sshd`) and returns its READY line; skips
/// the test when this machine cannot run it, fails it when the harness broke.
let require (name: string) =
    match outcomes.GetOrAdd(name, fun n -> lazy (runScript n)).Value with
    | Ready line -> line
    | Unsupported why -> skiptestf "%s harness cannot run here: %s" name why
    | Broken why -> failtestf "%s harness failed: %s" name why

/// A `key=value` field of a READY line.
let field (line: string) (key: string) =
    line.Split(' ')
    |> Array.tryPick (fun w -> if w.StartsWith(key + "=") then Some(w.Substring(key.Length + 1)) else None)
    |> Option.defaultWith (fun () -> failwithf "no %s= in '%s'" key line)

/// Runs a shell command on this machine; returns (exit code, stdout).
let sh (command: string) =
    let psi = ProcessStartInfo("/bin/bash", [ "-c"; command ])
    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    p.StandardError.ReadToEndAsync() |> ignore
    p.WaitForExit()
    p.ExitCode, out.Result

/// Runs a bash command line; its exit code and its stdout followed by its stderr (for messages).
let shWithErrors (command: string) =
    let psi = ProcessStartInfo("/bin/bash", [ "-c"; command ])
    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    p.ExitCode, out.Result + err.Result

/// Polls `probe` (an external daemon's view, which has no event to wait on) until it returns Some, within `limit`.
let pollUntil (limit: TimeSpan) (what: string) (probe: unit -> 'T option) =
    let sw = Stopwatch.StartNew()
    let rec loop () =
        match probe () with
        | Some v -> v
        | None when sw.Elapsed > limit -> failtestf "gave up after %.0f s waiting for %s" limit.TotalSeconds what
        | None ->
            Threading.Tasks.Task.Delay(500).Wait()
            loop ()
    loop ()

/// Quotes a word for bash.
let quote (s: string) = "'" + s.Replace("'", "'\\''") + "'"
