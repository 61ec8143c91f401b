/// The worker executable's command line (Parsl.Workers, parsed with System.CommandLine): a person or a provider that gets a flag
/// wrong sees one line naming the flag and the value, never a .NET stack trace.
module Parsl.Tests.WorkerCliTests

open System.Diagnostics
open Expecto
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput

/// Runs the worker executable copied next to the tests; its exit code, stdout and stderr.
let private worker (args: string list) =
    let psi = ProcessStartInfo("dotnet", RedirectStandardOutput = true, RedirectStandardError = true)
    for a in HtexOptions.defaultWorkerDll () :: args do psi.ArgumentList.Add a
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEnd()
    if not (p.WaitForExit 60000) then
        p.Kill true
        failtest "the worker did not exit within 60 s"
    p.ExitCode, out.Result, err

let private oneLineError (err: string) =
    let lines = err.Trim().Split('\n')
    Expect.equal lines.Length 1 (sprintf "one line on stderr, got:\n%s" err)
    Expect.isFalse (err.Contains "Exception") "no exception"
    lines[0]

let tests =
    testList "Worker command line" [
        test "a value that is not a number is one line naming the flag and the value" {
            let code, _, err =
                worker [ "--manager"; "--address"; "tcp://127.0.0.1:1"; "--block-id"; "0"; "--max-workers-per-node"; "abc" ]
            Expect.equal code 64 "exit code 64 (usage)"
            let line = oneLineError err
            Expect.stringContains line "--max-workers-per-node" "names the flag"
            Expect.stringContains line "'abc'" "names the value"
        }
        test "an unknown flag is one line naming it" {
            let code, _, err = worker [ "--manager"; "--adress"; "tcp://127.0.0.1:1" ]
            Expect.equal code 64 "exit code 64"
            Expect.stringContains (oneLineError err) "--adress" "names the flag"
        }
        test "a manager without its address or block is one line saying what is needed" {
            let code, _, err = worker [ "--manager"; "--block-id"; "0" ]
            Expect.equal code 64 "exit code 64"
            Expect.stringContains (oneLineError err) "--address" "says what is missing"
        }
        test "no mode is one line naming both" {
            let code, _, err = worker []
            Expect.equal code 64 "exit code 64"
            let line = oneLineError err
            Expect.stringContains line "--manager" "names --manager"
            Expect.stringContains line "--worker" "names --worker"
        }
        test "--help lists every flag and exits with 0" {
            let code, out, _ = worker [ "--help" ]
            Expect.equal code 0 "exit code 0"
            for flag in [ "--manager"; "--worker"; "--max-workers-per-node"; "--cpu-affinity"; "--no-shared-fs" ] do
                Expect.stringContains out flag (sprintf "lists %s" flag)
        }
        test "a worker line with a rank that is not a number goes to the parser and is one line" {
            let code, _, err = worker [ "--worker"; "x"; "--generation"; "0"; "--connect"; "parsl-net-no-such-manager" ]
            Expect.equal code 64 "exit code 64"
            Expect.stringContains (oneLineError err) "--worker" "names the flag"
        }
    ]
