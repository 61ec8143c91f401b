/// MPI figures: the node scheduler's decisions per second over a 1,000-node fake node list (pure, no processes), and
/// the time from submitting a 4-rank MPICH task to all four ranks running, through a real MPIExecutor block on this
/// machine (tests/harness/mpi.sh installs MPICH; the program is compiled here).
module Parsl.Bench.Mpi

open System
open System.Diagnostics
open System.IO
open Parsl
open Parsl.Executors
open Parsl.Executors.Mpi
open Parsl.Providers

let private harness () =
    // Above the published benchmark (inside the repository), else above the working directory.
    let rec up (d: DirectoryInfo) =
        if isNull d then None
        elif File.Exists(Path.Combine(d.FullName, "tests", "harness", "mpi.sh")) then Some(Path.Combine(d.FullName, "tests", "harness", "mpi.sh"))
        else up d.Parent
    match up (DirectoryInfo AppContext.BaseDirectory) |> Option.orElse (up (DirectoryInfo Environment.CurrentDirectory)) with
    | Some h -> h
    | None -> failwith "tests/harness/mpi.sh not found above the benchmark or the working directory: run it from the repository"

let private sh (program: string) (args: string list) =
    let psi = ProcessStartInfo(program, args, RedirectStandardOutput = true, RedirectStandardError = true)
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEnd()
    p.WaitForExit()
    p.ExitCode, out.Result.Trim() + err

/// Submits and releases tasks of 1 to 64 nodes (a fixed pseudo-random mix) against 1,000 fake nodes, keeping the
/// block busy so that the backlog is never empty; a decision is one submit or one release.
let decisions (print: string -> unit) =
    let nodes = [ for i in 1..1000 -> sprintf "fake-node%04d" i ]
    let rng = Random(42)
    let mutable s = NodeScheduler.create NodeScheduler.DefaultMaxBypass nodes
    let mutable next = 0L
    let mutable count = 0
    let running = Collections.Generic.Queue<int64>()
    let step () =
        if running.Count > 0 && (s.Backlog.Length > 8 || rng.Next 2 = 0) then
            let s', ps = NodeScheduler.release (running.Dequeue()) s
            s <- s'
            for p in ps do
                match p with
                | Start(k, _) -> running.Enqueue k
                | _ -> ()
        else
            next <- next + 1L
            let s', ps = NodeScheduler.submit next (1 + rng.Next 64) s
            s <- s'
            for p in ps do
                match p with
                | Start(k, _) -> running.Enqueue k
                | _ -> ()
        count <- count + 1
    for _ in 1..20000 do step ()
    count <- 0
    let secs = Measure.time (fun () -> for _ in 1..100000 do step ())
    Measure.figure print "MPI node scheduler decisions/s, 1,000 fake nodes" (float count / secs) "decisions/s"

let private helloSource = """
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, sum;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d running\n", rank, size);
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
"""

/// Submit → the fourth rank's line in the task's output (the ranks print after MPI_Init and an MPI_Allreduce), on a
/// block that is already up; the median of 10.
let submitToRanks (print: string -> unit) =
    match sh "/bin/bash" [ harness () ] with
    | code, why when code <> 0 -> print (sprintf "MPI submit → all ranks running: skipped (%s)" (why.Trim()))
    | _ ->
        let dir = Measure.runDir ()
        let src = Path.Combine(dir, "hello.c")
        File.WriteAllText(src, helloSource)
        let exe = Path.Combine(dir, "hello")
        match sh "mpicc.mpich" [ "-o"; exe; src ] with
        | code, why when code <> 0 -> print (sprintf "MPI submit → all ranks running: mpicc.mpich failed (%s)" why)
        | _ ->
            let d = MpiExecutorOptions.defaults ()
            let ex =
                MPIExecutor(
                    { d with
                        MpiProgram = Some "mpiexec.mpich"
                        Htex = { d.Htex with Provider = LocalProvider({ LocalProvider.Defaults with Launcher = BasicLaunchers.simple }) } })
            use dfk = DataFlowKernel.Load(Measure.config [ ex ])
            let opts = { AppOptions.defaults with Resources = Map.ofList [ "num_nodes", box 1; "num_ranks", box 4 ] }
            let run = App.shellWith dfk opts (fun (out: string) -> sprintf "$PARSL_MPI_PREFIX %s > %s" exe out)
            (run (Arg.value (Path.Combine(dir, "warm.out")))).Task.Wait()
            let lines (p: string) = try File.ReadAllLines(p).Length with _ -> 0
            let samples =
                [ for i in 1..10 ->
                    let out = Path.Combine(dir, sprintf "run%d.out" i)
                    let sw = Stopwatch.StartNew()
                    let f = run (Arg.value out)
                    while lines out < 4 && not f.IsCompleted do
                        Threading.Thread.Sleep 1
                    let ms = sw.Elapsed.TotalMilliseconds
                    f.Task.Wait()
                    ms ]
                |> List.sort
            Measure.figure print "MPI submit → all 4 ranks running (MPICH, median of 10)" samples[samples.Length / 2] "ms"

let run (print: string -> unit) =
    decisions print
    submitToRanks print
