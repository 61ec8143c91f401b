/// The test tools a new user's cluster would have (Open MPI and MPICH, TaskVine's `vine_worker`), from the repository's
/// harness scripts (tests/harness), which install or build them when run as root on Debian.
module Parsl.PackageTests.Harness

open System
open System.Diagnostics
open System.IO
open Expecto

/// Runs tests/harness/NAME.sh and returns its READY line. Where it cannot run (not root, not Debian: exit 2) the test is
/// skipped, saying what is missing; where it broke, the test fails with the script's last words.
let require (name: string) =
    let script = Path.Combine(Sandbox.repoRoot (), "tests", "harness", name + ".sh")
    let psi = ProcessStartInfo("/bin/bash", [ script ], RedirectStandardOutput = true, RedirectStandardError = true)
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    // Building CCTools from source takes minutes the first time.
    if not (p.WaitForExit(TimeSpan.FromMinutes 20.0)) then
        (try p.Kill true with _ -> ())
        failtestf "tests/harness/%s.sh did not finish within 20 minutes" name
    p.WaitForExit()
    let tail (s: string) = s.Trim().Split('\n') |> Array.rev |> Array.truncate 15 |> Array.rev |> String.concat "\n"
    match p.ExitCode with
    | 0 -> out.Result.Trim()
    | 2 -> skiptestf "the %s harness cannot run here (it installs what this test needs): %s" name (err.Result.Trim())
    | c -> failtestf "tests/harness/%s.sh exited %d:\n%s" name c (tail err.Result)

/// A `key=value` field of a READY line.
let field (line: string) (key: string) =
    line.Split(' ')
    |> Array.tryPick (fun w -> if w.StartsWith(key + "=") then Some(w.Substring(key.Length + 1)) else None)
    |> Option.defaultWith (fun () -> failwithf "no %s= in '%s'" key line)
