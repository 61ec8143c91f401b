/// The HighThroughputExecutor with its blocks from a real one-node Slurm cluster (tests/harness/slurm.sh):
/// sbatch starts the managers, which connect back from inside the jobs.
module Parsl.Tests.HtexSlurmTests

open System
open System.IO
open Expecto
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Providers
open Parsl.Tests.TestUtil

/// Job names of the executor labelled `label` that squeue still lists (any state).
let queuedJobsOf (label: string) =
    let _, out = Harness.sh "squeue -h -o '%i %j'"
    out.Split('\n')
    |> Array.map (fun l -> l.Trim())
    |> Array.filter (fun l -> l.Contains(sprintf " parsl.%s.block-" label))
    |> List.ofArray

let waitQueueEmpty label =
    Harness.pollUntil (TimeSpan.FromSeconds 60.0) (sprintf "no job of %s in squeue" label) (fun () ->
        if (queuedJobsOf label).IsEmpty then Some() else None)

/// An executor on Slurm with short heartbeats and status polls, so a lost job is seen within seconds.
let slurmHtex label (f: HtexOptions -> HtexOptions) =
    let provider = slurmForTests (fun o -> { o with Launcher = BasicLaunchers.singleNode })
    let options =
        f
            { HtexOptions.defaults () with
                Label = label
                Provider = provider
                MaxWorkersPerNode = Some 2
                HeartbeatPeriod = TimeSpan.FromMilliseconds 250.0
                HeartbeatThreshold = TimeSpan.FromSeconds 3.0
                StrategyPeriod = TimeSpan.FromMilliseconds 500.0 }
    let htex = HighThroughputExecutor(options)
    htex, load (fun c -> { c with Executors = [ htex ] })

let label name = sprintf "%s-%d" name (Random.Shared.Next(100000, 999999))

let jobIdOf (htex: HighThroughputExecutor) blockId =
    await (htex.BlocksAsync()) |> List.find (fun b -> b.BlockId = blockId) |> fun b -> b.JobId.Value

let tests =
    testSequencedGroup "provider-daemons" <| testList "HTEx on Slurm" [
        test "blocks are sbatch jobs; function and shell apps run inside them" {
            Harness.require "slurm" |> ignore
            let name = label "htex-slurm"
            let htex, dfk = slurmHtex name id
            let out = Path.Combine(tempRunDir (), "shell.out")
            let () =
                use _ = dfk
                let square = App.func dfk (fun (x: int) -> x * x)
                let jobEnv = App.func dfk (fun (_: int) -> Environment.GetEnvironmentVariable "SLURM_JOB_ID")
                let shell = App.shell dfk (fun (p: string) -> sprintf "echo \"$SLURM_JOB_ID $SLURM_JOB_NAME\" > %s" p)
                Expect.equal (await (square (Arg.value 7)).Task) 49 "a function app ran"
                let job = jobIdOf htex "0"
                Expect.equal (await (jobEnv (Arg.value 0)).Task) job "the worker runs inside Slurm job of block 0"
                Expect.equal (await (shell (Arg.value out)).Task) 0 "the shell app succeeded"
                let words = File.ReadAllText(out).Trim().Split(' ')
                Expect.equal words[0] job "the shell app saw $SLURM_JOB_ID of the block"
                Expect.stringStarts words[1] (sprintf "parsl.%s.block-0." name) "and the block's job name"
                let managers = await (htex.ConnectedManagersAsync())
                Expect.equal (managers |> List.map (fun m -> m.BlockId)) [ "0" ] "one manager, from block 0"
                Expect.contains (queuedJobsOf name |> List.map (fun l -> l.Split(' ')[0])) job "the job is in squeue"
            waitQueueEmpty name
        }
        test "scancel of a block: its task fails with ManagerLost, a new block runs later tasks, idle blocks are scancelled" {
            Harness.require "slurm" |> ignore
            let name = label "htex-slurm-lost"
            let htex, dfk =
                slurmHtex name (fun o ->
                    { o with
                        Strategy = Parsl.Jobs.HtexAutoScale
                        MaxIdleTime = TimeSpan.FromSeconds 2.0 })
            let started = Path.Combine(tempRunDir (), "started")
            let () =
                use _ = dfk
                let slow = App.func dfk (fun (p: string) -> File.WriteAllText(p, Environment.GetEnvironmentVariable "SLURM_JOB_ID"); Threading.Thread.Sleep 120000; 0)
                let jobEnv = App.func dfk (fun (_: int) -> Environment.GetEnvironmentVariable "SLURM_JOB_ID")
                let f = slow (Arg.value started)
                Harness.pollUntil (TimeSpan.FromSeconds 60.0) "the slow task to start" (fun () ->
                    if File.Exists started && File.ReadAllText started <> "" then Some() else None)
                let first = jobIdOf htex "0"
                Expect.equal (File.ReadAllText started) first "the slow task runs in block 0's job"
                let code, _ = Harness.sh (sprintf "scancel %s" first)
                Expect.equal code 0 "scancel"
                match errorOf f with
                | :? ManagerLost as m -> Expect.equal m.Hostname Environment.MachineName "the node is named"
                | e -> failtestf "expected ManagerLost, got %O" e
                let second = await (jobEnv (Arg.value 1)).Task
                Expect.notEqual second first "a later task ran in another job"
                let blocks = await (htex.BlocksAsync())
                let b1 = blocks |> List.find (fun b -> b.JobId = Some second)
                Expect.notEqual b1.BlockId "0" "from a new block"
                Expect.equal (blocks |> List.find (fun b -> b.BlockId = "0")).Status.State JobState.Cancelled "block 0 is CANCELLED"
                // Nothing left to do: the strategy scales the idle block in, with scancel.
                Harness.pollUntil (TimeSpan.FromSeconds 60.0) "the idle block to be scaled in" (fun () ->
                    if await (htex.BlocksAsync()) |> List.exists (fun b -> b.BlockId = b1.BlockId && b.ScaledIn) then Some() else None)
                Harness.pollUntil (TimeSpan.FromSeconds 60.0) "the scaled-in job to leave squeue" (fun () ->
                    if queuedJobsOf name |> List.exists (fun l -> l.StartsWith(second + " ")) then None else Some())
            waitQueueEmpty name
        }
    ]
