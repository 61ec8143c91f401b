module Parsl.Tests.ProvidersGridEngineTests

open System
open System.IO
open System.Threading
open Expecto
open Parsl.Providers

let request =
    { JobName = "parsl.htex.block-3.1700000000.000000"
      ScriptDir = "/home/u/run/submit_scripts"
      StdoutPath = "/home/u/run/submit_scripts/b3.stdout"
      StderrPath = "/home/u/run/submit_scripts/b3.stderr"
      TasksPerNode = 1
      LaunchScript = "worker_pool\n" }

let inQstat (id: string) =
    let _, out = Harness.sh "qstat"
    GridEngine.parseStatus out |> List.exists (fun r -> r.JobId = id)

let withProvider (options: GridEngineOptions) (f: Parsl.Providers.IExecutionProvider -> ResizeArray<string> -> unit) =
    let p = new GridEngineProvider(options)
    let ip = p :> IExecutionProvider
    ip.Initialize(ProvidersSlurmTests.context ())
    let submitted = ResizeArray<string>()
    try f ip submitted
    finally
        if submitted.Count > 0 then ip.CancelAsync(List.ofSeq submitted, CancellationToken.None) |> TestUtil.await |> ignore
        (p :> IDisposable).Dispose()

let tests =
    testList "Providers.GridEngine" [
        test "The script has the shell, output paths, working directory, h_rt, options and worker_init in order" {
            let o = { GridEngine.defaults with Walltime = "02:00:00"; SchedulerOptions = "#$ -pe smp 4"; WorkerInit = "source env.sh" }
            let lines = GridEngine.render o request |> ProvidersSlurmTests.scriptLines
            Expect.equal lines[0..6]
                [| "#!/bin/bash"; "#$ -S /bin/bash"; "#$ -N parsl.htex.block-3.1700000000.000000"
                   "#$ -o /home/u/run/submit_scripts/b3.stdout"; "#$ -e /home/u/run/submit_scripts/b3.stderr"; "#$ -cwd"; "#$ -l h_rt=02:00:00" |] "header"
            Expect.equal lines[7] "#$ -pe smp 4" "scheduler options"
            Expect.contains lines "source env.sh" "worker_init"
            Expect.contains lines "worker_pool" "launch"
        }
        test "qsub -terse with or without a queue; the id it prints" {
            Expect.equal (GridEngine.submitCommand GridEngine.defaults "/s/a.submit") "qsub -terse '/s/a.submit'" "no queue"
            Expect.equal (GridEngine.submitCommand { GridEngine.defaults with Queue = Some "all.q" } "/s/a.submit") "qsub -q 'all.q' -terse '/s/a.submit'" "queue"
            Expect.equal (GridEngine.parseSubmit "17\n") (Some "17") "terse id"
            Expect.equal (GridEngine.parseSubmit "18.1-4:1\n") (Some "18") "array job"
            Expect.equal (GridEngine.parseSubmit "Unable to run job: denied\n") None "refused"
        }
        test "qstat rows map to states (sample output of Grid Engine 8.1.9)" {
            let out =
                "job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID \n" +
                "-----------------------------------------------------------------------------------------------------------------\n" +
                "      4 0.55500 a.submit   root         r     11/25/2026 01:40:02 all.q@vm                           1        \n" +
                "      5 0.55500 b.submit   root         qw    11/25/2026 01:40:03                                    1        \n" +
                "      6 0.55500 c.submit   root         Eqw   11/25/2026 01:40:03                                    1        \n" +
                "      7 0.55500 d.submit   root         dr    11/25/2026 01:40:03 all.q@vm                           1        \n" +
                "      8 0.55500 e.submit   root         t     11/25/2026 01:40:03 all.q@vm                           1        \n"
            Expect.equal (GridEngine.parseStatus out |> List.map (fun r -> r.JobId, r.State))
                [ "4", JobState.Running; "5", JobState.Pending; "6", JobState.Failed; "7", JobState.Completed; "8", JobState.Running ] "rows"
        }
        test "qacct's exit_status decides COMPLETED or FAILED" {
            let sample = "==============================================================\nqname        all.q\njobnumber    3\nfailed       0    \nexit_status  5                   \n"
            Expect.equal (GridEngine.parseAccounting "3" sample |> Option.map (fun r -> r.State, r.ExitCode)) (Some(JobState.Failed, Some 5)) "failed"
            Expect.equal (GridEngine.parseAccounting "3" "error: job id 3 not found\n") None "not yet"
        }
        test "Validate names fields" {
            let errs = GridEngine.validate { GridEngine.defaults with Walltime = "1h"; NodesPerBlock = 0; Queue = Some "" }
            Expect.equal (errs |> List.map (fun e -> e.Field) |> List.sort)
                ([ "GridEngineProvider.NodesPerBlock"; "GridEngineProvider.Queue"; "GridEngineProvider.Walltime" ] |> List.sort) "fields"
        }
        testSequencedGroup "provider-daemons" <| test "Live: a block runs and is deleted; a finished one is COMPLETED, a failing one FAILED with its code" {
            Harness.require "gridengine" |> ignore
            withProvider { GridEngine.defaults with CmdTimeout = TimeSpan.FromSeconds 60.0 } (fun p submitted ->
                let out = Path.Combine(Directory.CreateTempSubdirectory("parsl-sge-out").FullName, "ran")
                let longId = ProvidersSlurmTests.submit p (sprintf "echo $JOB_ID > %s; sleep 120" out) 1
                let okId = ProvidersSlurmTests.submit p "echo fine" 1
                let badId = ProvidersSlurmTests.submit p "echo failing; exit 4" 1
                submitted.AddRange [ longId; okId; badId ]
                Expect.contains [ JobState.Pending; JobState.Running ] (ProvidersSlurmTests.statusOf p longId).State "queued"
                ProvidersSlurmTests.waitStateWithin (TimeSpan.FromSeconds 240.0) p longId ((=) JobState.Running) "RUNNING" |> ignore
                Harness.pollUntil (TimeSpan.FromSeconds 240.0) "the block's file" (fun () ->
                    if File.Exists out && File.ReadAllText(out).Trim() = longId then Some() else None)
                let ok = ProvidersSlurmTests.waitStateWithin (TimeSpan.FromSeconds 240.0) p okId JobState.isTerminal "the good block to end"
                Expect.equal ok.State JobState.Completed "COMPLETED"
                let bad = ProvidersSlurmTests.waitStateWithin (TimeSpan.FromSeconds 240.0) p badId JobState.isTerminal "the failing block to end"
                Expect.equal (bad.State, bad.ExitCode) (JobState.Failed, Some 4) "FAILED 4"
                Expect.stringContains (defaultArg bad.Stdout "") "failing" "stdout summary"
                Expect.equal (p.CancelAsync([ longId ], CancellationToken.None) |> TestUtil.await) [ true ] "qdel"
                Expect.equal (ProvidersSlurmTests.statusOf p longId).State JobState.Cancelled "CANCELLED"
                Harness.pollUntil (TimeSpan.FromSeconds 60.0) "the job to leave qstat" (fun () -> if inQstat longId then None else Some()))
        }
    ]
