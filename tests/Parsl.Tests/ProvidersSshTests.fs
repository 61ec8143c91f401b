module Parsl.Tests.ProvidersSshTests

open System
open System.IO
open System.Threading
open Expecto
open Parsl.Providers

/// SSH options for the harness's sshd (loopback, key login as its test user).
let options () =
    let ready = Harness.require "sshd"
    { SshOptions.create "127.0.0.1" (Harness.field ready "user") with
        Port = int (Harness.field ready "port")
        PrivateKeyFile = Some(Harness.field ready "key")
        HostKeyFingerprint = Some(Harness.field ready "fingerprint")
        RemoteScriptDir = sprintf "/tmp/parsl-ssh-%s" (Guid.NewGuid().ToString("N")) }

let rec unwrap (e: exn) =
    match e with
    | :? AggregateException as a when not (isNull a.InnerException) -> unwrap a.InnerException
    | e -> e

let tests =
    testSequencedGroup "provider-daemons" <| testList "Providers.Ssh" [
        test "The SSH channel runs commands (exit code, stdout, stderr) and copies files with SFTP" {
            let o = options ()
            use ch = new SshChannel(o) :> IExecutionChannel
            let dir = ch.OpenAsync("unused", CancellationToken.None) |> TestUtil.await
            Expect.equal dir o.RemoteScriptDir "absolute remote dir"
            let r = ch.ExecuteAsync("echo out; echo err >&2; exit 7", TimeSpan.FromSeconds 30.0, CancellationToken.None) |> TestUtil.await
            Expect.equal (r.ExitCode, r.Stdout.Trim(), r.Stderr.Trim()) (7, "out", "err") "result"
            let local = Path.GetTempFileName()
            File.WriteAllText(local, "payload")
            let remote = ch.PushFileAsync(local, dir, CancellationToken.None) |> TestUtil.await
            Expect.equal (File.ReadAllText remote) "payload" "uploaded (the remote host is this machine)"
            Expect.equal (ch.ReadSummaryAsync(remote, CancellationToken.None) |> TestUtil.await) (Some "payload") "summary"
            Expect.throwsT<CommandTimeoutException> (fun () ->
                try ch.ExecuteAsync("sleep 20", TimeSpan.FromSeconds 1.0, CancellationToken.None) |> TestUtil.await |> ignore
                with e -> raise (unwrap e)) "timeout"
        }
        test "A wrong host key fingerprint is refused with HostKeyMismatchException naming both keys" {
            let o = { options () with HostKeyFingerprint = Some "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" }
            use ch = new SshChannel(o) :> IExecutionChannel
            let e =
                try ch.ExecuteAsync("true", TimeSpan.FromSeconds 10.0, CancellationToken.None) |> TestUtil.await |> ignore; None
                with e -> Some(unwrap e)
            match e with
            | Some(:? HostKeyMismatchException as m) ->
                Expect.equal m.Expected "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" "expected"
                Expect.equal m.Actual (options ()).HostKeyFingerprint.Value "actual is the server's"
                Expect.stringContains m.Message "refused" "clear message"
            | other -> failtestf "expected HostKeyMismatchException, got %A" other
        }
        test "The Slurm provider driven over SSH: script copied to the login node, block runs, status and cancel" {
            Harness.require "slurm" |> ignore
            let o = options ()
            let opts = { ProvidersSlurmTests.slurmOptions with Channel = Ssh o }
            ProvidersSlurmTests.withProvider opts (fun p submitted ->
                let out = Path.Combine(o.RemoteScriptDir, "ran")
                let id = ProvidersSlurmTests.submit p (sprintf "echo $SLURM_JOB_ID > %s; sleep 120" out) 1
                submitted.Add id
                Expect.isNonEmpty (Directory.GetFiles(o.RemoteScriptDir, "parsl.test.block-0.*")) "script copied over SFTP"
                ProvidersSlurmTests.waitState p id ((=) Parsl.Providers.JobState.Running) "RUNNING over SSH" |> ignore
                Harness.pollUntil (TimeSpan.FromSeconds 60.0) "the block's file" (fun () ->
                    if File.Exists out && File.ReadAllText(out).Trim() = id then Some() else None)
                Expect.equal (p.CancelAsync([ id ], CancellationToken.None) |> TestUtil.await) [ true ] "scancel over SSH"
                Harness.pollUntil (TimeSpan.FromSeconds 60.0) "the job to leave squeue" (fun () ->
                    if ProvidersSlurmTests.inQueue id then None else Some()))
        }
    ]
