/// The MPIExecutor: the resource specification, the launch prefixes, the node scheduler (pure, with properties), and
/// end to end with real Open MPI and MPICH (tests/harness/mpi.sh), a node list of fake nodes for the scheduler in a
/// real manager, and a real one-node Slurm block with srun.
module Parsl.Tests.MpiTests

open System
open System.Collections.Generic
open System.IO
open Expecto
open FsCheck
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Executors.Mpi
open Parsl.Providers
open Parsl.Tests.TestUtil

let private tmpFile name = Path.Combine(tempRunDir (), name)

let private spec (pairs: (string * obj) list) : IReadOnlyDictionary<string, obj> =
    let d = Dictionary<string, obj>()
    for k, v in pairs do
        d[k] <- v
    d :> _

let private invalidOf (r: Result<MpiShape, exn>) =
    match r with
    | Error(:? InvalidResourceSpecification as e) -> e
    | Error e -> failtestf "expected InvalidResourceSpecification, got %O" e
    | Ok s -> failtestf "expected a refusal, got %A" s

let resourceSpec =
    testList "MPI resource specification" [
        test "an empty specification is refused, naming what to give (Parsl #3427: it would wait forever)" {
            let e = invalidOf (ResourceSpec.validate (spec []))
            Expect.stringContains e.Message "num_nodes" "says what to give"
        }
        test "unknown keys are refused by name" {
            let e = invalidOf (ResourceSpec.validate (spec [ "num_nodes", box 1; "cores", box 2 ]))
            Expect.sequenceEqual e.InvalidKeys [ "cores" ] "the unknown key"
        }
        test "ranks_per_node is derived as an integer, never Parsl's \"2.0\"" {
            let s = ResourceSpec.validate (spec [ "num_nodes", box 2; "num_ranks", box 4 ])
            Expect.equal s (Ok { NumNodes = 2; NumRanks = 4; RanksPerNode = 2; LauncherOptions = "" }) "derived"
            Expect.equal ((ResourceSpec.wire (Result.defaultWith raise s))["ranks_per_node"]) (box "2") "as \"2\" on the wire"
        }
        test "num_ranks is derived from ranks_per_node; num_nodes defaults to 1; text and whole floats are numbers" {
            Expect.equal (ResourceSpec.validate (spec [ "num_nodes", box "3"; "ranks_per_node", box 2.0 ])) (Ok { NumNodes = 3; NumRanks = 6; RanksPerNode = 2; LauncherOptions = "" }) "from ranks_per_node"
            Expect.equal (ResourceSpec.validate (spec [ "num_ranks", box 4L; "launcher_options", box "--bind-to none" ])) (Ok { NumNodes = 1; NumRanks = 4; RanksPerNode = 4; LauncherOptions = "--bind-to none" }) "one node"
        }
        test "inconsistent or unusable values are refused at the call, naming the keys" {
            let e = invalidOf (ResourceSpec.validate (spec [ "num_nodes", box 2; "num_ranks", box 5; "ranks_per_node", box 2 ]))
            Expect.containsAll e.InvalidKeys [ "num_ranks"; "ranks_per_node" ] "the contradiction"
            let e = invalidOf (ResourceSpec.validate (spec [ "num_nodes", box 2; "num_ranks", box 5 ]))
            Expect.stringContains e.Message "divide" "5 ranks on 2 nodes"
            for bad in [ box 0; box -1; box 1.5; box "two"; box true ] do
                let e = invalidOf (ResourceSpec.validate (spec [ "num_nodes", bad ]))
                Expect.sequenceEqual e.InvalidKeys [ "num_nodes" ] (sprintf "num_nodes = %A" bad)
            let e = invalidOf (ResourceSpec.validate (spec [ "num_nodes", box 1; "launcher_options", box 3 ]))
            Expect.sequenceEqual e.InvalidKeys [ "launcher_options" ] "options are text"
        }
        testProperty "a valid shape is consistent and survives the wire" (fun (PositiveInt n) (PositiveInt p) ->
            let n, p = 1 + n % 64, 1 + p % 64
            match ResourceSpec.validate (spec [ "num_nodes", box n; "ranks_per_node", box p ]) with
            | Ok s ->
                s.NumRanks = n * p
                && MpiKeys.toShape [ for KeyValue(k, v) in ResourceSpec.wire s -> k, string v ] = Ok s
            | Error _ -> false)
    ]

let prefixes =
    let shape = { NumNodes = 2; NumRanks = 8; RanksPerNode = 4; LauncherOptions = "--extra" }
    let nodes = [ "n1"; "n2" ]
    testList "MPI prefixes" [
        test "MPICH/Hydra, Open MPI, srun and aprun each get their own syntax" {
            Expect.equal (Prefix.hydra "mpiexec" shape nodes) "mpiexec -n 8 -ppn 4 -hosts n1,n2 --extra" "Hydra"
            Expect.equal (Prefix.openMpi "mpiexec" shape nodes) "mpiexec -n 8 --host n1:4,n2:4 --map-by ppr:4:node --extra" "Open MPI (no -ppn)"
            Expect.equal (Prefix.srun "srun" shape nodes) "srun --ntasks 8 --ntasks-per-node 4 --nodelist n1,n2 --nodes 2 --extra" "srun"
            Expect.equal (Prefix.aprun "aprun" shape nodes) "aprun -n 8 -N 4 -node-list n1,n2 --extra" "aprun"
        }
        test "the task's values: PARSL_MPI_PREFIX for the chosen launcher, PARSL_MPIEXEC_PREFIX in the syntax of the mpiexec found" {
            let v launcher program openMpi = Prefix.values launcher program openMpi shape nodes |> Map.ofList
            let hydra = v MpiLauncher.Mpiexec "mpiexec.mpich" false
            Expect.equal hydra["mpi_prefix"] "mpiexec.mpich -n 8 -ppn 4 -hosts n1,n2 --extra" "Hydra's syntax with its program"
            Expect.equal hydra["mpi_nodelist"] "n1,n2" "the nodes"
            Expect.equal hydra["ranks_per_node"] "4" "an integer"
            let detected = v MpiLauncher.Mpiexec "mpiexec" true
            Expect.stringContains detected["mpi_prefix"] "--map-by ppr:4:node" "an Open MPI mpiexec gets Open MPI's syntax"
            let srun = v MpiLauncher.Srun "srun" false
            Expect.stringStarts srun["mpi_prefix"] "srun --ntasks 8" "srun chosen"
            Expect.stringStarts srun["mpiexec_prefix"] "mpiexec -n 8 -ppn 4" "the other prefixes are there too"
            Expect.stringStarts srun["aprun_prefix"] "aprun -n 8" "aprun's too"
            Expect.isTrue (Prefix.isOpenMpiVersion "mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/") "Open MPI 4's --version"
            Expect.isFalse (Prefix.isOpenMpiVersion "HYDRA build details:\n    Version: 4.0.2") "Hydra's --version"
        }
        test "node lists: node files drop duplicates, comments and slot counts; Slurm, PBS and this host are found" {
            Expect.equal (NodeList.parse "# fake\nnode1 slots=4\nnode2\nnode1\n\n") [ "node1"; "node2" ] "parsed"
            let pbs = tmpFile "pbs_nodefile"
            File.WriteAllText(pbs, "fake-a\nfake-a\nfake-b\n")
            let env (vars: (string * string) list) k = vars |> List.tryFind (fst >> (=) k) |> Option.map snd |> Option.toObj
            Expect.equal (NodeList.discover (env [ "PBS_NODEFILE", pbs ]) None) (Ok([ "fake-a"; "fake-b" ], "PBS_NODEFILE " + pbs)) "PBS"
            Expect.equal (NodeList.discover (env []) None |> Result.map fst) (Ok [ Environment.MachineName ]) "this host"
            match NodeList.discover (env [ "PBS_NODEFILE", pbs + ".missing" ]) None with
            | Error why -> Expect.stringContains why "PBS_NODEFILE" "names the source"
            | Ok v -> failtestf "a missing node file gave %A" v
        }
    ]

/// A step of the scheduler model: a task asks for nodes, or the i-th running task ends.
type SchedOp =
    | Ask of nodes: int
    | End of index: int

let private allocated (s: NodeSchedulerState) = s.Running |> Map.toList |> List.collect snd

/// The invariants after every step: no node given twice, every node free or held, waiting and running apart.
let private check (total: int) (s: NodeSchedulerState) =
    let held = allocated s
    List.length held = List.length (List.distinct held)
    && Set.intersect (Set.ofList held) s.Free |> Set.isEmpty
    && Set.count s.Free + List.length held = total
    && s.Backlog |> List.forall (fun w -> not (s.Running.ContainsKey w.Key))

let scheduler =
    let config = { FsCheckConfig.defaultConfig with maxTest = 300 }
    testList "MPI node scheduler" [
        test "4 nodes: two 2-node tasks on disjoint nodes, a 3-node task waits, 5 nodes fail at once, nodes come back" {
            let s = NodeScheduler.create 16 [ "fake1"; "fake2"; "fake3"; "fake4" ]
            let s, p1 = NodeScheduler.submit 1L 2 s
            let s, p2 = NodeScheduler.submit 2L 2 s
            Expect.equal (p1 @ p2) [ Start(1L, [ "fake1"; "fake2" ]); Start(2L, [ "fake3"; "fake4" ]) ] "both start, apart"
            let s, p3 = NodeScheduler.submit 3L 3 s
            Expect.isEmpty p3 "the 3-node task waits"
            let s, p5 = NodeScheduler.submit 5L 5 s
            Expect.equal p5 [ TooLarge(5L, 5, 4) ] "5 nodes of 4: refused at once"
            let s, r1 = NodeScheduler.release 1L s
            Expect.isEmpty r1 "2 free nodes are not 3"
            let s, r2 = NodeScheduler.release 2L s
            Expect.equal r2 [ Start(3L, [ "fake1"; "fake2"; "fake3" ]) ] "the waiting task starts"
            let s, _ = NodeScheduler.release 3L s
            Expect.equal s.Free.Count 4 "all back"
        }
        test "smallest first, but a large task passed over MaxBypass times is served next" {
            let s = NodeScheduler.create 2 [ "a"; "b" ]
            let s, _ = NodeScheduler.submit 1L 1 s
            let s, _ = NodeScheduler.submit 2L 1 s
            let s, _ = NodeScheduler.submit 10L 2 s // waits for both
            let s, _ = NodeScheduler.submit 3L 1 s
            let s, _ = NodeScheduler.submit 4L 1 s
            let s, _ = NodeScheduler.submit 5L 1 s
            let s, r = NodeScheduler.release 1L s
            Expect.equal r [ Start(3L, [ "a" ]) ] "a small one first (bypass 1)"
            let s, r = NodeScheduler.release 2L s
            Expect.equal r [ Start(4L, [ "b" ]) ] "another (bypass 2: out of patience)"
            let s, r = NodeScheduler.release 3L s
            Expect.isEmpty r "no small task jumps the starving one"
            let _, r = NodeScheduler.release 4L s
            Expect.equal r [ Start(10L, [ "a"; "b" ]) ] "the large task runs"
        }
        testPropertyWithConfig config "no node is given twice, nodes return however tasks end, none starves, over-size fails at once" <| fun (PositiveInt total) (NonNegativeInt patience) (ops: SchedOp list) ->
            let total = 1 + total % 6
            let patience = patience % 5
            let s0 = NodeScheduler.create patience [ for i in 1..total -> sprintf "fake%d" i ]
            let asked = Dictionary<int64, int>()
            let arrival = Dictionary<int64, int>()
            let started = HashSet<int64>()
            let bypassed = Dictionary<int64, int>()
            let mutable ok = true
            let observe (s: NodeSchedulerState) (ps: Placement list) =
                for p in ps do
                    match p with
                    | Start(k, nodes) ->
                        ok <- ok && nodes.Length = asked[k] && started.Add k
                        for KeyValue(w, a) in arrival do
                            if not (started.Contains w) && a < arrival[k] && asked[w] <= total then
                                bypassed[w] <- (match bypassed.TryGetValue w with | true, n -> n + 1 | _ -> 1)
                    | TooLarge(k, n, t) -> ok <- ok && n > t && t = total && asked[k] = n
                ok <- ok && check total s && (bypassed.Values |> Seq.forall (fun b -> b <= patience))
            let mutable s = s0
            let mutable next = 0L
            for op in ops do
                match op with
                | Ask n ->
                    let n = 1 + abs n % 8
                    next <- next + 1L
                    asked[next] <- n
                    arrival[next] <- int next
                    let s', ps = NodeScheduler.submit next n s
                    // Over-size fails at once; anything that fits is started or waits.
                    ok <- ok && (n <= total || ps = [ TooLarge(next, n, total) ])
                    s <- s'
                    observe s ps
                | End i ->
                    let running = s.Running |> Map.toList
                    if not running.IsEmpty then
                        let k, _ = running[abs i % running.Length]
                        let s', ps = NodeScheduler.release k s
                        s <- s'
                        observe s ps
            // Tasks keep ending: every task that fits starts, and every node comes back.
            let mutable guard = 0
            while not s.Running.IsEmpty && guard < 10000 do
                let k = s.Running |> Map.toList |> List.head |> fst
                let s', ps = NodeScheduler.release k s
                s <- s'
                observe s ps
                guard <- guard + 1
            ok && s.Backlog.IsEmpty && s.Free.Count = total
    ]

// ---- End to end -------------------------------------------------------------------------------------------------

/// Open MPI refuses root without these, and more ranks than cores without the last (set once, inherited by blocks).
let private openMpiAsRoot () =
    for k, v in [ "OMPI_ALLOW_RUN_AS_ROOT", "1"; "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"; "OMPI_MCA_rmaps_base_oversubscribe", "1" ] do
        Environment.SetEnvironmentVariable(k, v)

/// The MPI program the tests compile: each rank adds its rank to an MPI_Allreduce and prints what it got, then sleeps
/// for argv[1] seconds (if given) before MPI_Finalize.
let private helloSource = """
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank, size, sum;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d size %d sum %d pid %d\n", rank, size, sum, (int)getpid());
    fflush(stdout);
    if (argc > 1) sleep(atoi(argv[1]));
    MPI_Finalize();
    return 0;
}
"""

/// Compiles the program with an MPI's compiler wrapper (mpicc.openmpi, mpicc.mpich); returns the binary's path.
let private compileHello (mpicc: string) =
    let dir = tempRunDir ()
    let src = Path.Combine(dir, "hello.c")
    File.WriteAllText(src, helloSource)
    let exe = Path.Combine(dir, "hello")
    let code, out = Harness.shWithErrors (sprintf "%s -o %s %s" mpicc exe src)
    if code <> 0 then failtestf "%s failed (%d): %s" mpicc code out
    exe

/// The ranks' lines of an output file: (rank, size, sum, pid).
let private ranksIn (path: string) =
    if not (File.Exists path) then []
    else
        File.ReadAllLines path
        |> Array.choose (fun l ->
            match l.Split(' ') with
            | [| "rank"; r; "size"; n; "sum"; s; "pid"; p |] -> Some(int r, int n, int s, int p)
            | _ -> None)
        |> List.ofArray

let private expectFourRanks (what: string) (lines: (int * int * int * int) list) =
    Expect.equal (lines |> List.map (fun (r, _, _, _) -> r) |> List.sort) [ 0; 1; 2; 3 ] (what + ": 4 distinct ranks")
    for _, n, s, _ in lines do
        Expect.equal (n, s) (4, 6) (what + ": each rank saw 4 ranks and the sum 0+1+2+3")

/// An MPI executor on this machine with short heartbeats and polls.
let mpiExecutor (label: string) (f: MpiExecutorOptions -> MpiExecutorOptions) =
    let d = MpiExecutorOptions.defaults ()
    let options =
        f
            { d with
                Label = label
                Htex =
                    { d.Htex with
                        HeartbeatPeriod = TimeSpan.FromMilliseconds 200.0
                        HeartbeatThreshold = TimeSpan.FromSeconds 5.0
                        StrategyPeriod = TimeSpan.FromMilliseconds 200.0
                        Provider =
                            LocalProvider
                                { LocalProvider.Defaults with
                                    Launcher = BasicLaunchers.simple
                                    StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 } } }
    let ex = MPIExecutor(options)
    ex, load (fun c -> { c with Executors = [ ex ] })

let private mpiShell dfk (pairs: (string * obj) list) (walltime: TimeSpan option) (f: string -> string) =
    App.shellWith dfk { AppOptions.defaults with Resources = Map.ofList pairs; Walltime = walltime } f

/// Whether a process is alive (zombies are dead: nothing reaps orphans here).
let private alive (pid: int) =
    try
        let stat = File.ReadAllText(sprintf "/proc/%d/stat" pid)
        stat.Substring(stat.LastIndexOf ')' + 2).[0] <> 'Z'
    with _ -> false

let private waitFor (seconds: float) (what: string) (f: unit -> bool) =
    Harness.pollUntil (TimeSpan.FromSeconds seconds) what (fun () -> if f () then Some() else None)

let realMpi =
    testSequencedGroup "mpi-real" <| testList "MPIExecutor with real MPI" [
        test "{num_nodes=1, num_ranks=4} under Open MPI: 4 distinct ranks with the right sum" {
            Harness.require "mpi" |> ignore
            openMpiAsRoot ()
            let hello = compileHello "mpicc.openmpi"
            let out = tmpFile "ompi.out"
            let _, dfk = mpiExecutor "mpi-ompi" (fun o -> { o with MpiLauncher = MpiLauncher.OpenMpi; MpiProgram = Some "mpiexec.openmpi" })
            use _ = dfk
            let run = mpiShell dfk [ "num_nodes", box 1; "num_ranks", box 4 ] None (fun o -> sprintf "echo \"$PARSL_MPI_PREFIX\" > %s.prefix; $PARSL_MPI_PREFIX %s > %s" o hello o)
            Expect.equal (await (run (Arg.value out)).Task) 0 "the MPI run succeeded"
            expectFourRanks "Open MPI" (ranksIn out)
            Expect.stringContains (File.ReadAllText(out + ".prefix")) (sprintf "--host %s:4 --map-by ppr:4:node" Environment.MachineName) "Open MPI's syntax"
        }
        test "{num_nodes=1, num_ranks=4} under MPICH (Hydra's -ppn/-hosts): 4 distinct ranks with the right sum" {
            Harness.require "mpi" |> ignore
            let hello = compileHello "mpicc.mpich"
            let out = tmpFile "mpich.out"
            let _, dfk = mpiExecutor "mpi-mpich" (fun o -> { o with MpiLauncher = MpiLauncher.Mpiexec; MpiProgram = Some "mpiexec.mpich" })
            use _ = dfk
            let run = mpiShell dfk [ "num_nodes", box 1; "num_ranks", box 4 ] None (fun o -> sprintf "echo \"$PARSL_MPI_PREFIX\" > %s.prefix; $PARSL_MPI_PREFIX %s > %s" o hello o)
            Expect.equal (await (run (Arg.value out)).Task) 0 "the MPI run succeeded"
            expectFourRanks "MPICH" (ranksIn out)
            Expect.stringContains (File.ReadAllText(out + ".prefix")) (sprintf "-n 4 -ppn 4 -hosts %s" Environment.MachineName) "Hydra's syntax"
        }
        test "Parsl's mpiexec finds that the mpiexec on the PATH is Open MPI's and uses its syntax; a function app reads the values" {
            Harness.require "mpi" |> ignore
            openMpiAsRoot ()
            let _, dfk = mpiExecutor "mpi-detect" (fun o -> { o with MpiLauncher = MpiLauncher.Mpiexec; MpiProgram = Some "mpiexec.openmpi" })
            use _ = dfk
            let values =
                App.funcWith dfk { AppOptions.defaults with Resources = Map.ofList [ "num_nodes", box 1; "num_ranks", box 2 ] } (fun (_: int) ->
                    MpiEnvironment.prefix (), MpiEnvironment.numRanks (), MpiEnvironment.nodes ())
            let prefix, ranks, nodes = await (values (Arg.value 0)).Task
            Expect.equal ranks 2 "PARSL_NUM_RANKS"
            Expect.equal nodes [ Environment.MachineName ] "PARSL_MPI_NODELIST: this host"
            Expect.stringContains prefix "--map-by ppr:2:node" "Open MPI's syntax for an Open MPI mpiexec"
        }
        test "walltime of a running 4-rank task (MPICH, every rank in a session of its own) leaves no rank" {
            Harness.require "mpi" |> ignore
            let hello = compileHello "mpicc.mpich"
            let out = tmpFile "wall.out"
            let _, dfk = mpiExecutor "mpi-wall" (fun o -> { o with MpiProgram = Some "mpiexec.mpich" })
            use _ = dfk
            let run = mpiShell dfk [ "num_nodes", box 1; "num_ranks", box 4 ] (Some(TimeSpan.FromSeconds 20.0)) (fun o -> sprintf "$PARSL_MPI_PREFIX %s 600 > %s" hello o)
            let f = run (Arg.value out)
            waitFor 20.0 "4 ranks running" (fun () -> (ranksIn out).Length = 4)
            let pids = ranksIn out |> List.map (fun (_, _, _, p) -> p)
            Expect.isTrue (pids |> List.forall alive) "the ranks run"
            Expect.isTrue (errorOf f :? AppTimeout) "the walltime fails the task"
            waitFor 10.0 "every rank to be gone" (fun () -> pids |> List.forall (alive >> not))
        }
        test "cancelling a running 4-rank task (Open MPI) leaves no rank, and its node runs the next task" {
            Harness.require "mpi" |> ignore
            openMpiAsRoot ()
            let hello = compileHello "mpicc.openmpi"
            let out = tmpFile "cancel.out"
            let _, dfk = mpiExecutor "mpi-cancel" (fun o -> { o with MpiLauncher = MpiLauncher.OpenMpi; MpiProgram = Some "mpiexec.openmpi" })
            use _ = dfk
            let run = mpiShell dfk [ "num_nodes", box 1; "num_ranks", box 4 ] None (fun o -> sprintf "$PARSL_MPI_PREFIX %s 600 > %s" hello o)
            let f = run (Arg.value out)
            waitFor 30.0 "4 ranks running" (fun () -> (ranksIn out).Length = 4)
            let pids = ranksIn out |> List.map (fun (_, _, _, p) -> p)
            f.Cancel() |> ignore
            Expect.isTrue (errorOf f :? OperationCanceledException) "cancelled"
            waitFor 10.0 "every rank to be gone" (fun () -> pids |> List.forall (alive >> not))
            let quick = mpiShell dfk [ "num_nodes", box 1; "num_ranks", box 4 ] None (fun (_: string) -> "true")
            Expect.equal (await (quick (Arg.value "")).Task) 0 "the block's node came back: the next task runs"
        }
    ]

let fakeNodes =
    testList "MPIExecutor node scheduling in a real manager (fake node names)" [
        test "4 fake nodes: 2+2 apart, 3 waits, 5 fails at once; nodes come back after a failure, a cancel and a lost worker" {
            let dir = tempRunDir ()
            // Names only: these tasks do not run MPI, they record the nodes they were given and wait for a file.
            let nodeFile = Path.Combine(dir, "fake-nodes")
            File.WriteAllText(nodeFile, "fake-node1\nfake-node2\nfake-node3\nfake-node4\n")
            let all = set [ "fake-node1"; "fake-node2"; "fake-node3"; "fake-node4" ]
            let _, dfk = mpiExecutor "mpi-fake" (fun o -> { o with NodeFile = Some nodeFile; MaxWorkersPerBlock = 4 })
            use _ = dfk
            // Each task writes NAME.nodes, then waits for NAME.go: "0"/"3" is its exit code, "kill" kills its worker.
            let holder n =
                mpiShell dfk [ "num_nodes", box n; "ranks_per_node", box 1 ] None (fun (name: string) ->
                    let p = Path.Combine(dir, name)
                    sprintf "echo $PARSL_MPI_NODELIST > %s.nodes.tmp && mv %s.nodes.tmp %s.nodes; until [ -e %s.go ]; do sleep 0.05; done; v=$(cat %s.go); if [ \"$v\" = kill ]; then kill -9 $PPID; sleep 60; fi; exit $v" p p p p p)
            let nodesOf (name: string) =
                let p = Path.Combine(dir, name + ".nodes")
                waitFor 60.0 (name + " to start") (fun () -> File.Exists p)
                File.ReadAllText(p).Trim().Split(',') |> Set.ofArray
            let go (name: string) (v: string) = File.WriteAllText(Path.Combine(dir, name + ".go"), v)
            let a = holder 2 (Arg.value "a")
            let b = holder 2 (Arg.value "b")
            let na, nb = nodesOf "a", nodesOf "b"
            Expect.equal (na.Count, nb.Count) (2, 2) "two nodes each"
            Expect.isEmpty (Set.intersect na nb) "on disjoint nodes"
            Expect.equal (Set.union na nb) all "of the block's four"
            let c = holder 3 (Arg.value "c")
            match errorOf (holder 5 (Arg.value "d")) with
            | :? InvalidResourceSpecification as e -> Expect.stringContains e.Message "4 node" "names the block's size"
            | e -> failtestf "expected InvalidResourceSpecification, got %O" e
            Expect.isFalse (a.IsCompleted || b.IsCompleted) "the 5-node task failed while the others still ran"
            go "a" "0"
            Expect.equal (await a.Task) 0 "a ends"
            Expect.isFalse (File.Exists(Path.Combine(dir, "c.nodes"))) "two free nodes do not start a 3-node task"
            go "b" "3"
            match errorOf b with
            | :? BashExitFailure as e -> Expect.equal e.ExitCode 3 "b failed"
            | e -> failtestf "expected BashExitFailure, got %O" e
            let nc = nodesOf "c"
            Expect.equal nc.Count 3 "c runs on three nodes"
            Expect.isNonEmpty (Set.intersect nc nb) "among them the failed task's"
            let e = holder 2 (Arg.value "e")
            e.Cancel() |> ignore
            Expect.isTrue (errorOf e :? OperationCanceledException) "a waiting task is cancelled"
            c.Cancel() |> ignore
            Expect.isTrue (errorOf c :? OperationCanceledException) "a running task is cancelled"
            let f = holder 4 (Arg.value "f")
            Expect.equal (nodesOf "f") all "after the cancels every node is free again"
            go "f" "kill"
            match errorOf f with
            | :? WorkerLost -> ()
            | e -> failtestf "expected WorkerLost, got %O" e
            let g = holder 4 (Arg.value "g")
            Expect.equal (nodesOf "g") all "the lost worker's nodes came back"
            go "g" "0"
            Expect.equal (await g.Task) 0 "g ends"
            Expect.isFalse (File.Exists(Path.Combine(dir, "e.nodes"))) "the cancelled waiting task never ran"
        }
        test "options are validated at load: a launcher other than SimpleLauncher, a missing node file, no workers" {
            let d = MpiExecutorOptions.defaults ()
            let bad =
                { d with
                    MaxWorkersPerBlock = 0
                    NodeFile = Some "/nonexistent/nodes"
                    Htex = { d.Htex with Provider = LocalProvider() } }
            let fields = MpiExecutorOptions.validate bad |> List.map (fun e -> e.Field)
            Expect.containsAll fields [ "MpiExecutor.MaxWorkersPerBlock"; "MpiExecutor.NodeFile"; "MpiExecutor.Htex.Provider" ] "each named"
            Expect.isEmpty (MpiExecutorOptions.validate d) "the defaults are valid"
        }
    ]

let slurm =
    testSequencedGroup "provider-daemons" <| testList "MPIExecutor on Slurm" [
        test "a real one-node Slurm block: srun starts 4 ranks of the Open MPI program with the right sum" {
            Harness.require "slurm" |> ignore
            Harness.require "mpi" |> ignore
            openMpiAsRoot ()
            let hello = compileHello "mpicc.openmpi"
            let out = tmpFile "srun.out"
            let provider = slurmForTests (fun o -> { o with Launcher = BasicLaunchers.simple })
            let _, dfk =
                mpiExecutor (sprintf "mpi-slurm-%d" (Random.Shared.Next(100000, 999999))) (fun o ->
                    { o with MpiLauncher = MpiLauncher.Srun; Htex = { o.Htex with Provider = provider } })
            use _ = dfk
            let run =
                mpiShell dfk [ "num_nodes", box 1; "num_ranks", box 4; "launcher_options", box "--mpi=pmix --overcommit" ] None (fun o ->
                    sprintf "echo \"$PARSL_MPI_PREFIX\" > %s.prefix; $PARSL_MPI_PREFIX %s > %s" o hello o)
            Expect.equal (await (run (Arg.value out)).Task) 0 "srun succeeded"
            expectFourRanks "srun" (ranksIn out)
            Expect.stringStarts (File.ReadAllText(out + ".prefix")) (sprintf "srun --ntasks 4 --ntasks-per-node 4 --nodelist %s --nodes 1" Environment.MachineName) "srun's prefix, with the node from SLURM_NODELIST"
        }
    ]

let escapes =
    testList "MPI process trees" [
        test "a walltime kills what the command started in sessions and groups of its own, as MPI launchers start ranks" {
            let pids = tmpFile "escaped.pids"
            // setsid puts each sleep in a new session and group, where a kill of the command's group does not reach.
            let call: Parsl.Node.ShellCall =
                { AppName = "escapes"
                  BuildCommand = fun () -> sprintf "for i in 1 2 3; do setsid sleep 600 & echo $! >> %s; done; wait" pids
                  Stdout = None
                  Stderr = None
                  Walltime = Some(TimeSpan.FromSeconds 3.0)
                  Outputs = [] }
            let ran = Threading.Tasks.Task.Run(fun () -> try Parsl.Node.Runtime.Shell.run call Threading.CancellationToken.None |> ignore; None with e -> Some e)
            match await ran with
            | Some(:? AppTimeout) -> ()
            | other -> failtestf "expected AppTimeout, got %A" other
            let started = File.ReadAllLines pids |> Array.map int |> List.ofArray
            Expect.equal started.Length 3 "three escaped"
            waitFor 10.0 "every escaped process to be gone" (fun () -> started |> List.forall (alive >> not))
        }
    ]

let tests = testList "MPI" [ escapes; resourceSpec; prefixes; scheduler; fakeNodes; realMpi; slurm ]
