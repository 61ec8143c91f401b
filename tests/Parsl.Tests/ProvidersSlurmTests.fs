module Parsl.Tests.ProvidersSlurmTests

open System
open System.IO
open System.Threading
open Expecto
open Parsl
open Parsl.Providers

let request tpn =
    { JobName = "parsl.htex.block-0.1700000000.000000"
      ScriptDir = "/scratch/run/submit_scripts"
      StdoutPath = "/scratch/run/submit_scripts/j.stdout"
      StderrPath = "/scratch/run/submit_scripts/j.stderr"
      TasksPerNode = tpn
      LaunchScript = "process_worker_pool --block 0\n" }

let scriptLines (s: string) = s.Split('\n') |> Array.map (fun l -> l.TrimEnd())

let fields (errs: ConfigurationError list) = errs |> List.map (fun e -> e.Field)

/// A context whose script dir is a fresh folder.
let context () =
    let d = Directory.CreateTempSubdirectory("parsl-slurm-").FullName
    { ScriptDir = Path.Combine(d, "submit_scripts"); Log = Serilog.Core.Logger.None }

let statusOf (p: IExecutionProvider) id =
    (p.StatusAsync([ id ], CancellationToken.None) |> TestUtil.await).Head

let waitStateWithin limit (p: IExecutionProvider) id (accept: JobState -> bool) what =
    Harness.pollUntil limit what (fun () ->
        let s = statusOf p id
        if accept s.State then Some s else None)

let waitState p id accept what = waitStateWithin (TimeSpan.FromSeconds 120.0) p id accept what

let submit (p: IExecutionProvider) cmd tpn =
    p.SubmitAsync(cmd, tpn, "parsl.test.block-0", CancellationToken.None) |> TestUtil.await

let inQueue (id: string) =
    let _, out = Harness.sh "squeue -h -o %i"
    out.Split('\n') |> Array.exists (fun l -> l.Trim() = id)

let rendering =
    testList "Providers.Slurm.render" [
        test "Defaults: nodes, minutes, tasks per node, exclusive, no optional directives" {
            let s = Slurm.render Slurm.defaults (request 4) |> scriptLines
            for l in [ "#!/bin/bash"; "#SBATCH --job-name=parsl.htex.block-0.1700000000.000000"; "#SBATCH --output=/scratch/run/submit_scripts/j.stdout"
                       "#SBATCH --error=/scratch/run/submit_scripts/j.stderr"; "#SBATCH --nodes=1"; "#SBATCH --time=10"
                       "#SBATCH --ntasks-per-node=4"; "#SBATCH --exclusive"; "export JOBNAME=\"parsl.htex.block-0.1700000000.000000\""
                       "export PARSL_SCRIPT_DIR='/scratch/run/submit_scripts'"; "process_worker_pool --block 0" ] do
                Expect.contains s l l
            Expect.isFalse (s |> Array.exists (fun l -> l.StartsWith "#SBATCH --partition" || l.StartsWith "#SBATCH --mem")) "no optional lines"
        }
        test "Every option becomes its directive; cores and memory are exported" {
            let o =
                { Slurm.defaults with
                    Partition = Some "debug"; Account = Some "proj1"; Qos = Some "high"; Constraint = Some "knl"
                    Clusters = Some "c1"; GpusPerNode = Some 2; Gres = Some "gpu:a100:2"; NodesPerBlock = 3
                    CoresPerNode = Some 8; MemPerNode = Some 16; Walltime = "01:30:00"; Exclusive = false
                    SchedulerOptions = "#SBATCH --mail-type=NONE"; WorkerInit = "module load dotnet" }
            let s = Slurm.render o (request 4) |> scriptLines
            for l in [ "#SBATCH --partition=debug"; "#SBATCH --account=proj1"; "#SBATCH --qos=high"; "#SBATCH --constraint=knl"
                       "#SBATCH --clusters=c1"; "#SBATCH --gpus-per-node=2"; "#SBATCH --gres=gpu:a100:2"; "#SBATCH --nodes=3"
                       "#SBATCH --time=90"; "#SBATCH --mem=16g"; "#SBATCH --cpus-per-task=2"; "#SBATCH --mail-type=NONE"
                       "module load dotnet"; "export PARSL_CORES=2"; "export PARSL_MEMORY_GB=16" ] do
                Expect.contains s l l
            Expect.isFalse (Array.contains "#SBATCH --exclusive" s) "not exclusive"
            let firstCommand = s |> Array.findIndex (fun l -> l = "module load dotnet")
            let lastDirective = s |> Array.findIndexBack (fun l -> l.StartsWith "#SBATCH")
            Expect.isLessThan lastDirective firstCommand "all #SBATCH lines precede the first command"
        }
        testProperty "Walltime minutes are hours*60+minutes, at least 1" (fun (h: byte) (m0: byte) (s0: byte) ->
            let m, s = int m0 % 60, int s0 % 60
            BatchJobs.walltimeMinutes (sprintf "%02d:%02d:%02d" h m s) = max 1 (int h * 60 + m))
    ]

let parsing =
    testList "Providers.Slurm.parse" [
        test "sbatch output gives the job id; Python-style regex groups are accepted" {
            Expect.equal (Slurm.parseSubmit Slurm.defaults "Submitted batch job 4242\n") (Some "4242") "default"
            let o = { Slurm.defaults with RegexJobId = @"job (?P<id>\d+) on cluster" }
            Expect.equal (Slurm.parseSubmit o "Submitted batch job 77 on cluster c1\n") (Some "77") "python group"
            Expect.equal (Slurm.parseSubmit Slurm.defaults "sbatch: error: Batch job submission failed\n") None "none"
        }
        test "squeue states map as Parsl's table" {
            // Sample squeue --noheader --format='%i %t' output.
            let r = Slurm.parseStatus Squeue "101 PD\n102 R\n103 CG\n104 CA\n105 TO\n106 NF\n107 ZZ\n"
            Expect.equal (r |> List.map (fun x -> x.JobId, x.State))
                [ "101", JobState.Pending; "102", JobState.Running; "103", JobState.Running; "104", JobState.Cancelled
                  "105", JobState.Timeout; "106", JobState.Failed; "107", JobState.Unknown ] "states"
        }
        test "sacct states and exit codes, including 'CANCELLED by <uid>'" {
            // Sample sacct -X --noheader --format=jobid,exitcode,state%20 output.
            let out = "       201        0:0            COMPLETED \n       202        3:0               FAILED \n       203       0:15      CANCELLED by 0 \n       204        0:0            PREEMPTED \n       205        0:0        OUT_OF_MEMORY \n       206        0:0            SUSPENDED \n"
            let r = Slurm.parseStatus Sacct out
            Expect.equal (r |> List.map (fun x -> x.JobId, x.State, x.ExitCode))
                [ "201", JobState.Completed, Some 0; "202", JobState.Failed, Some 3; "203", JobState.Cancelled, Some -15
                  "204", JobState.Timeout, Some 0; "205", JobState.Failed, Some 0; "206", JobState.Held, Some 0 ] "rows"
        }
        test "scontrol show job -o gives the final state and exit code of a job that left the queue" {
            // Captured from Slurm 22.05 on this machine (trimmed).
            let out = "JobId=1 JobName=t.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:00 TimeLimit=UNLIMITED"
            let r = Slurm.parseScontrol out
            Expect.equal (r |> Option.map (fun x -> x.JobId, x.State, x.ExitCode)) (Some("1", JobState.Failed, Some 3)) "failed 3"
            Expect.isNone (Slurm.parseScontrol "slurm_load_jobs error: Invalid job id specified") "unknown job"
        }
        test "Status commands batch ids and honour clusters" {
            let o = { Slurm.defaults with Clusters = Some "c1" }
            Expect.equal (Slurm.statusCommand o Squeue [ "1"; "2" ]) "squeue --clusters='c1' --noheader --format='%i %t' --job '1,2'" "squeue"
            Expect.equal (Slurm.statusCommand Slurm.defaults Sacct [ "3" ]) "sacct -X --noheader --format=jobid,exitcode,state%20 --job '3'" "sacct"
            Expect.equal (Slurm.cancelCommand o [ "1"; "2" ]) "scancel --clusters='c1' '1' '2'" "scancel"
            Expect.equal (BatchJobs.batches 2 [ "a"; "b"; "c" ]) [ [ "a"; "b" ]; [ "c" ] ] "batches"
        }
        test "Validate names the field and the fix" {
            Expect.isEmpty (Slurm.validate Slurm.defaults) "defaults are valid"
            let bad =
                { Slurm.defaults with
                    MinBlocks = 3; MaxBlocks = 1; Walltime = "10 minutes"; CoresPerNode = Some 0; StatusBatchSize = 0
                    RegexJobId = "Submitted (\\d+)"; Partition = Some "" }
            Expect.equal (fields (Slurm.validate bad) |> List.sort)
                ([ "SlurmProvider.MaxBlocks"; "SlurmProvider.Walltime"; "SlurmProvider.CoresPerNode"; "SlurmProvider.StatusBatchSize"
                   "SlurmProvider.RegexJobId"; "SlurmProvider.Partition" ] |> List.sort) "fields"
            let ssh = { Slurm.defaults with Channel = Ssh(SshOptions.create "login.example.org" "me") }
            let errs = Slurm.validate ssh
            Expect.containsAll (fields errs) [ "SlurmProvider.Channel.HostKeyFingerprint"; "SlurmProvider.Channel.PrivateKeyFile" ] "ssh fields"
            let fp = errs |> List.find (fun e -> e.Field.EndsWith "HostKeyFingerprint")
            Expect.stringContains fp.Message "ssh-keyscan" "says how to get the fingerprint"
        }
    ]

let slurmOptions = { Slurm.defaults with Exclusive = false; Walltime = "00:05:00"; CmdTimeout = TimeSpan.FromSeconds 30.0 }

/// Runs `f` with a provider and cancels whatever it submitted afterwards, so no job outlives the test.
let withProvider (options: SlurmOptions) (f: IExecutionProvider -> ResizeArray<string> -> unit) =
    let p = new SlurmProvider(options)
    let ip = p :> IExecutionProvider
    ip.Initialize(context ())
    let submitted = ResizeArray<string>()
    try
        f ip submitted
    finally
        if submitted.Count > 0 then ip.CancelAsync(List.ofSeq submitted, CancellationToken.None) |> TestUtil.await |> ignore
        (p :> IDisposable).Dispose()

let live =
    testSequencedGroup "provider-daemons" <| testList "Providers.Slurm.live" [
        test "A block runs: PENDING/RUNNING, writes its host and job id, is CANCELLED, and leaves the queue" {
            Harness.require "slurm" |> ignore
            withProvider slurmOptions (fun p submitted ->
                let out = Path.Combine(Directory.CreateTempSubdirectory("parsl-slurm-out").FullName, "ran")
                let id = submit p (sprintf "echo \"$(hostname) $SLURM_JOB_ID\" > %s; sleep 120" out) 1
                submitted.Add id
                let first = statusOf p id
                Expect.contains [ JobState.Pending; JobState.Running ] first.State "queued or running at once"
                waitState p id ((=) JobState.Running) "RUNNING" |> ignore
                let text = Harness.pollUntil (TimeSpan.FromSeconds 60.0) "the block's file" (fun () ->
                    if File.Exists out && File.ReadAllText(out).Trim() <> "" then Some(File.ReadAllText out) else None)
                Expect.equal (text.Trim()) (sprintf "%s %s" (Environment.MachineName) id) "hostname and SLURM_JOB_ID"
                Expect.equal (p.CancelAsync([ id ], CancellationToken.None) |> TestUtil.await) [ true ] "cancelled"
                Expect.equal (statusOf p id).State JobState.Cancelled "CANCELLED"
                Harness.pollUntil (TimeSpan.FromSeconds 60.0) "the job to leave squeue" (fun () -> if inQueue id then None else Some()))
        }
        test "A finished block is COMPLETED; a failing one is FAILED with its exit code and output" {
            Harness.require "slurm" |> ignore
            withProvider slurmOptions (fun p submitted ->
                let ok = submit p "echo fine" 1
                let bad = submit p "echo about to fail; echo oops >&2; exit 3" 1
                submitted.AddRange [ ok; bad ]
                let s1 = waitState p ok JobState.isTerminal "the good block to end"
                Expect.equal s1.State JobState.Completed "COMPLETED"
                let s2 = waitState p bad JobState.isTerminal "the failing block to end"
                Expect.equal s2.State JobState.Failed "FAILED"
                Expect.equal s2.ExitCode (Some 3) "exit code 3"
                Expect.stringContains (defaultArg s2.Stdout "") "about to fail" "stdout summary"
                Expect.stringContains (defaultArg s2.Stderr "") "oops" "stderr summary")
        }
        test "SrunLauncher starts tasks-per-node copies inside the allocation" {
            Harness.require "slurm" |> ignore
            withProvider { slurmOptions with Launcher = SrunLauncher() } (fun p submitted ->
                let out = Path.Combine(Directory.CreateTempSubdirectory("parsl-srun-out").FullName, "ranks")
                let id = submit p (sprintf "echo rank $SLURM_PROCID >> %s" out) 2
                submitted.Add id
                let s = waitState p id JobState.isTerminal "the srun block to end"
                Expect.equal s.State JobState.Completed (sprintf "COMPLETED (%A)" s)
                Expect.equal (File.ReadAllLines out |> Array.sort) [| "rank 0"; "rank 1" |] "two ranks, each its own SLURM_PROCID")
        }
        test "Submitting to a partition that does not exist raises SubmitException with sbatch's message" {
            Harness.require "slurm" |> ignore
            withProvider { slurmOptions with Partition = Some "nosuchpartition" } (fun p _ ->
                let e = Expect.throwsC (fun () -> submit p "true" 1 |> ignore) id
                let rec find (e: exn) =
                    match e with
                    | :? SubmitException as s -> s
                    | :? AggregateException as a -> find a.InnerException
                    | e -> failtestf "expected SubmitException, got %O" e
                let s = find e
                Expect.stringContains (s.Stderr.ToLowerInvariant()) "partition" "sbatch explains")
        }
    ]

let tests = testList "Providers.Slurm" [ rendering; parsing; live ]
