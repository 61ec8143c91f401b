/// Memoization and checkpoints through the kernel, on the thread-pool executor.
module Parsl.Tests.MemoizationTests

open System
open System.IO
open System.Threading
open Expecto
open Parsl
open Parsl.Runtime
open Parsl.Tests.TestUtil

let private cached = { AppOptions.defaults with Cache = true }

/// A kernel on `baseDir` with config changes.
let private loadAt (baseDir: string) (f: Config -> Config) =
    DataFlowKernel.Load(f { Config.defaults with RunDir = baseDir })

/// Records in a checkpoint file (0 when it does not exist yet).
let private recordsIn (file: string) =
    if not (File.Exists file) then 0
    else
        match Checkpoint.decode (File.ReadAllBytes file) with
        | Ok c -> c.Records.Length
        | Error m -> failwith m

/// Waits, by a bounded poll, until `condition` holds.
let private eventually (what: string) (condition: unit -> bool) =
    let deadline = DateTime.UtcNow.AddSeconds 30.0
    while not (condition ()) do
        if DateTime.UtcNow > deadline then failtestf "timed out after 30 s waiting for %s" what
        Thread.Sleep 20

type Point = { X: int; Y: int }

/// The exception `f` raises (fails the test when it raises none).
let private thrown (f: unit -> unit) : exn =
    try
        f ()
        failtest "expected an exception"
        null
    with
    | :? Expecto.AssertException -> reraise ()
    | e -> e

let tests =
    testList "Memoization" [
        test "a cached call with the same arguments ends memo_done without running" {
            use dfk = load id
            let runs = ref 0
            let double = App.funcWith dfk cached (fun (x: int) -> Interlocked.Increment runs |> ignore; x * 2)
            let a = double (Arg.value 3)
            Expect.equal (await a.Task) 6 "first call runs"
            let b = double (Arg.value 3)
            Expect.equal (await b.Task) 6 "second call gets the result"
            Expect.equal b.State MemoDone "memo_done"
            Expect.equal a.State ExecDone "the first is exec_done"
            Expect.equal runs.Value 1 "the body ran once"
            let c = double (Arg.value 4)
            Expect.equal (await c.Task) 8 "other arguments run"
            Expect.equal runs.Value 2 "ran for the new argument"
        }
        test "a future argument is keyed by its result" {
            use dfk = load id
            let runs = ref 0
            let inc = App.funcWith dfk cached (fun (x: int) -> Interlocked.Increment runs |> ignore; x + 1)
            let three = App.func dfk (fun (x: int) -> x) (Arg.value 3)
            let a = inc (Arg.value 3)
            await a.Task |> ignore
            let b = inc (Arg.future three)
            Expect.equal (await b.Task) 4 "result"
            Expect.equal b.State MemoDone "the future's result 3 matched the earlier call with 3"
            Expect.equal runs.Value 1 "ran once"
        }
        test "records, lists and maps are compared structurally" {
            use dfk = load id
            let runs = ref 0
            let sum = App.funcWith dfk cached (fun (p: Point list * Map<string, int>) ->
                Interlocked.Increment runs |> ignore
                (fst p |> List.sumBy (fun q -> q.X + q.Y)) + (snd p |> Map.fold (fun s _ v -> s + v) 0))
            let arg () = [ { X = 1; Y = 2 } ], Map.ofList [ "b", 2; "a", 1 ]
            Expect.equal (await (sum (Arg.value (arg ()))).Task) 6 "first"
            let again = sum (Arg.value (arg ()))
            Expect.equal (await again.Task) 6 "second"
            Expect.equal again.State MemoDone "equal structure, new objects"
            Expect.equal runs.Value 1 "ran once"
        }
        test "without Cache, or with Config.AppCache off, every call runs" {
            use dfk = load id
            let runs = ref 0
            let plain = App.func dfk (fun (x: int) -> Interlocked.Increment runs |> ignore; x)
            await (plain (Arg.value 1)).Task |> ignore
            await (plain (Arg.value 1)).Task |> ignore
            Expect.equal runs.Value 2 "no cache"
            use off = load (fun c -> { c with AppCache = false })
            let runs2 = ref 0
            let c = App.funcWith off cached (fun (x: int) -> Interlocked.Increment runs2 |> ignore; x)
            await (c (Arg.value 1)).Task |> ignore
            let second = c (Arg.value 1)
            await second.Task |> ignore
            Expect.equal runs2.Value 2 "AppCache off"
            Expect.equal second.State ExecDone "ran"
        }
        test "a memoized exception is returned again within the run" {
            use dfk = load id
            let runs = ref 0
            let boom = App.funcWith dfk cached (fun (x: int) -> Interlocked.Increment runs |> ignore; (failwithf "bad %d" x: int))
            let e1 = errorOf (boom (Arg.value 1))
            let e2 = errorOf (boom (Arg.value 1))
            Expect.isTrue (obj.ReferenceEquals(e1, e2)) "the same exception object"
            Expect.equal runs.Value 1 "ran once"
        }
        test "an argument with no encoding fails that task, naming the argument; other tasks run" {
            use dfk = load id
            let f = App.funcWith dfk cached (fun (s: IO.MemoryStream) -> int s.Length)
            match errorOf (f (Arg.value (new IO.MemoryStream()))) with
            | :? MemoizationError as e ->
                Expect.equal e.Argument "argument 1 ('s')" "names the argument"
                Expect.stringContains e.Message "MemoryStream" "names the type"
            | e -> failtestf "expected MemoizationError, got %O" e
            let g = App.funcWith dfk cached (fun (x: int) -> x)
            Expect.equal (await (g (Arg.value 5)).Task) 5 "others run"
        }
        test "a registered hasher makes a user type cacheable" {
            let hasher (o: obj) = BitConverter.GetBytes((o :?> MemoTests.Opaque).X)
            use dfk = load (fun c -> { c with MemoHashers = [ typeof<MemoTests.Opaque>, hasher ] })
            let runs = ref 0
            let f = App.funcWith dfk cached (fun (o: MemoTests.Opaque) -> Interlocked.Increment runs |> ignore; o.X)
            await (f (Arg.value (MemoTests.Opaque 7))).Task |> ignore
            let again = f (Arg.value (MemoTests.Opaque 7))
            Expect.equal (await again.Task) 7 "result"
            Expect.equal again.State MemoDone "hit through the hasher"
            Expect.equal runs.Value 1 "ran once"
        }
        test "IgnoreForCache leaves an argument out of the key; an unknown name is refused" {
            use dfk = load id
            let runs = ref 0
            let opts = { cached with IgnoreForCache = [ "label" ] }
            let f = App.func2With dfk opts (fun (x: int) (label: string) -> Interlocked.Increment runs |> ignore; x)
            await (f (Arg.value 1) (Arg.value "first")).Task |> ignore
            let again = f (Arg.value 1) (Arg.value "second")
            await again.Task |> ignore
            Expect.equal again.State MemoDone "label ignored"
            Expect.equal runs.Value 1 "ran once"
            let byPosition = App.func2With dfk { cached with IgnoreForCache = [ "1" ] } (fun (x: int) (y: int) -> x)
            await (byPosition (Arg.value 1) (Arg.value 1)).Task |> ignore
            Expect.equal (byPosition (Arg.value 1) (Arg.value 2)).Task.Result 1 "position 1 ignored"
            let e = thrown (fun () -> App.func2With dfk { cached with IgnoreForCache = [ "nope" ] } (fun (x: int) (y: int) -> x) |> ignore)
            Expect.stringContains e.Message "AppOptions.IgnoreForCache" "names the field"
        }
        test "task_exit checkpoints: a second run executes no task" {
            let baseDir = tempRunDir ()
            let runs = ref 0
            let work (x: int) = Interlocked.Increment runs |> ignore; sprintf "result %d" x
            let cfg (c: Config) = { c with CheckpointMode = Some TaskExit }
            do
                use dfk = loadAt baseDir cfg
                let f = App.funcWith dfk cached work
                let rs = [ for i in 1..5 -> f (Arg.value i) ]
                for r in rs do await r.Task |> ignore
                // task_exit: the records are on disk before cleanup.
                eventually "5 records" (fun () -> recordsIn dfk.CheckpointFile = 5)
            Expect.equal runs.Value 5 "first run"
            use dfk = loadAt baseDir cfg
            let f = App.funcWith dfk cached work
            let rs = [ for i in 1..5 -> f (Arg.value i) ]
            Expect.equal [ for r in rs -> await r.Task ] [ for i in 1..5 -> sprintf "result %d" i ] "results from the checkpoint"
            Expect.equal runs.Value 5 "the second run executed nothing"
            Expect.isTrue (rs |> List.forall (fun r -> r.State = MemoDone)) "memo_done"
        }
        test "explicit checkpoint files (the last run's) are reused; a new argument still runs" {
            let baseDir = tempRunDir ()
            let runs = ref 0
            let work (p: Point) = Interlocked.Increment runs |> ignore; { X = p.Y; Y = p.X }
            do
                use dfk = loadAt baseDir (fun c -> { c with CheckpointMode = Some TaskExit })
                let f = App.funcWith dfk cached work
                await (f (Arg.value { X = 1; Y = 2 })).Task |> ignore
            use dfk = loadAt baseDir (fun c -> { c with CheckpointFiles = Some(Checkpoints.last baseDir) })
            let f = App.funcWith dfk cached work
            let a = f (Arg.value { X = 1; Y = 2 })
            Expect.equal (await a.Task) { X = 2; Y = 1 } "an F# record rebuilt from the checkpoint"
            Expect.equal a.State MemoDone "memo_done"
            await (f (Arg.value { X = 5; Y = 6 })).Task |> ignore
            Expect.equal runs.Value 2 "only the new argument ran"
        }
        test "a crash-truncated checkpoint loses only its last record" {
            let baseDir = tempRunDir ()
            let runs = ref 0
            let work (x: int) = Interlocked.Increment runs |> ignore; x * 10
            let file =
                use dfk = loadAt baseDir (fun c -> { c with CheckpointMode = Some TaskExit })
                let f = App.funcWith dfk cached work
                for i in 1..3 do
                    await (f (Arg.value i)).Task |> ignore
                eventually "3 records" (fun () -> recordsIn dfk.CheckpointFile = 3)
                dfk.CheckpointFile
            // A crash in the middle of appending the third record.
            let bytes = File.ReadAllBytes file
            File.WriteAllBytes(file, Array.sub bytes 0 (bytes.Length - 3))
            use dfk = loadAt baseDir (fun c -> { c with CheckpointFiles = Some [ Path.GetDirectoryName file ] })
            let f = App.funcWith dfk cached work
            let rs = [ for i in 1..3 -> f (Arg.value i) ]
            Expect.equal [ for r in rs -> await r.Task ] [ 10; 20; 30 ] "results"
            Expect.equal runs.Value 4 "only the torn record's task ran again"
            Expect.equal [ for r in rs -> r.State ] [ MemoDone; MemoDone; ExecDone ] "states"
        }
        test "exceptions are not checkpointed" {
            let baseDir = tempRunDir ()
            let runs = ref 0
            let boom (x: int) : int = Interlocked.Increment runs |> ignore; failwith "no"
            do
                use dfk = loadAt baseDir (fun c -> { c with CheckpointMode = Some TaskExit })
                errorOf ((App.funcWith dfk cached boom) (Arg.value 1)) |> ignore
            use dfk = loadAt baseDir (fun c -> { c with CheckpointMode = Some TaskExit })
            errorOf ((App.funcWith dfk cached boom) (Arg.value 1)) |> ignore
            Expect.equal runs.Value 2 "ran in both runs"
        }
        test "periodic checkpoints land without any task exit write or manual call" {
            use dfk = load (fun c -> { c with CheckpointMode = Some Periodic; CheckpointPeriod = Some(TimeSpan.FromMilliseconds 200.0) })
            let f = App.funcWith dfk cached (fun (x: int) -> x)
            await (f (Arg.value 1)).Task |> ignore
            await (f (Arg.value 2)).Task |> ignore
            eventually "a periodic checkpoint" (fun () -> recordsIn dfk.CheckpointFile = 2)
        }
        test "dfk_exit checkpoints are written at cleanup, manual ones when asked" {
            let baseDir = tempRunDir ()
            let dfk = loadAt baseDir (fun c -> { c with CheckpointMode = Some DfkExit })
            let f = App.funcWith dfk cached (fun (x: int) -> x)
            await (f (Arg.value 1)).Task |> ignore
            dfk.WaitForCurrentTasks()
            Expect.equal (recordsIn dfk.CheckpointFile) 0 "nothing before cleanup"
            dfk.CleanupAsync().Wait()
            Expect.equal (recordsIn dfk.CheckpointFile) 1 "written at cleanup"
            use manual = loadAt baseDir (fun c -> { c with CheckpointMode = Some Manual; CheckpointFiles = Some [] })
            let g = App.funcWith manual cached (fun (x: int) -> x)
            await (g (Arg.value 1)).Task |> ignore
            await (g (Arg.value 2)).Task |> ignore
            manual.WaitForCurrentTasks()
            Expect.equal (recordsIn manual.CheckpointFile) 0 "nothing before the call"
            Expect.equal (await (manual.CheckpointAsync())) 2 "two records written"
            Expect.equal (recordsIn manual.CheckpointFile) 2 "on disk"
            Expect.equal (await (manual.CheckpointAsync())) 0 "nothing new"
        }
        test "checkpoint directories are found in numeric order past 999" {
            let baseDir = tempRunDir ()
            for n in [ "998"; "999"; "1000"; "notarun" ] do
                Directory.CreateDirectory(Path.Combine(baseDir, n, "checkpoint")) |> ignore
            Expect.equal (Checkpoints.last baseDir) [ Path.GetFullPath(Path.Combine(baseDir, "1000", "checkpoint")) ] "1000 is the last"
            Expect.equal (Checkpoints.all baseDir |> List.map (fun d -> Path.GetFileName(Path.GetDirectoryName d))) [ "998"; "999"; "1000" ] "numeric order"
        }
        test "a missing checkpoint, or a periodic mode without a period, is refused at load" {
            let e = thrown (fun () -> load (fun c -> { c with CheckpointFiles = Some [ "/nonexistent/checkpoint" ] }) |> ignore)
            Expect.isTrue (e :? BadCheckpoint) (sprintf "BadCheckpoint, got %O" e)
            let e = thrown (fun () -> load (fun c -> { c with CheckpointMode = Some Periodic }) |> ignore)
            Expect.stringContains e.Message "Config.CheckpointPeriod" "names the field"
        }
    ]
