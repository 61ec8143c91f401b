module Parsl.Tests.DeepResolverTests

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Expecto
open Parsl
open Parsl.Runtime
open Parsl.Tests.TestUtil

let private done' (v: 'T) = Task.FromResult v

/// A body that finishes only once the test opens the gate (after it has submitted its dependents).
let private afterGate (gate: TaskCompletionSource) (x: int) =
    task {
        do! gate.Task
        return x
    }

let private same (a: obj) (b: obj) msg = Expect.isTrue (obj.ReferenceEquals(a, b)) msg

let private unwrapAs<'T> (v: obj) : 'T =
    match DeepResolver.unwrap v with
    | :? 'T as r -> r
    | r -> failtestf "expected a %s, got %s" typeof<'T>.Name (if isNull r then "null" else r.GetType().Name)

let private containers =
    testList "containers" [
        test "array of tasks becomes an array of results" {
            let a, b = done' 1, done' 2
            let v = [| a; b |]
            Expect.sequenceEqual (DeepResolver.gather v) [ box a; box b ] "both futures, in order"
            Expect.equal (unwrapAs<int[]> v) [| 1; 2 |] "Task<int>[] -> int[]"
        }
        test "List<Task<string>> becomes List<string>" {
            let v = List [ done' "a"; done' "b" ]
            Expect.equal (DeepResolver.gather v).Length 2 "two futures"
            Expect.sequenceEqual (unwrapAs<List<string>> v) [ "a"; "b" ] "List<string>"
        }
        test "HashSet keeps its comparer when the element type does not change" {
            let v = HashSet<obj>([ box (done' "x"); box "Y" ])
            let r = unwrapAs<HashSet<obj>> v
            Expect.isTrue (r.SetEquals [ box "x"; box "Y" ]) "results in a HashSet<obj>"
            let typed = HashSet<Task<int>>([ done' 5 ])
            Expect.sequenceEqual (unwrapAs<HashSet<int>> typed) [ 5 ] "HashSet<Task<int>> -> HashSet<int>"
        }
        test "F# list, set and map" {
            Expect.equal (unwrapAs<int list> [ done' 1; done' 2; done' 3 ]) [ 1; 2; 3 ] "Task<int> list -> int list"
            // Futures are not comparable, so an F# set (or map key) never holds one: a set comes back as it is.
            let set' = Set.ofList [ "a"; "b" ]
            same (DeepResolver.unwrap set') set' "Set<string>"
            let m = Map [ "a", done' 1; "b", done' 2 ]
            Expect.equal (unwrapAs<Map<string, int>> m) (Map [ "a", 1; "b", 2 ]) "Map values"
        }
        test "Dictionary: keys and values, comparer kept when the key type does not change" {
            let d = Dictionary<string, Task<int>>(StringComparer.OrdinalIgnoreCase)
            d["a"] <- done' 1
            d["B"] <- done' 2
            Expect.equal (DeepResolver.gather d).Length 2 "two value futures"
            let r = unwrapAs<Dictionary<string, int>> d
            Expect.equal r["A"] 1 "case-insensitive lookup still works: comparer kept"
            Expect.equal r["b"] 2 "second value"
            let byKey = Dictionary<Task<int>, string>()
            byKey[done' 42] <- "answer"
            let r = unwrapAs<Dictionary<int, string>> byKey
            Expect.equal r[42] "answer" "future keys are resolved too"
        }
        test "tuples, struct tuples, long tuples and KeyValuePair" {
            Expect.equal (unwrapAs<int * string> (done' 1, "x")) (1, "x") "(Task<int> * string) -> (int * string)"
            Expect.equal (unwrapAs<struct (int * int)> (struct (done' 1, 2))) (struct (1, 2)) "struct tuple"
            let long = (done' 1, 2, 3, 4, 5, 6, 7, done' 8, "nine")
            Expect.equal (DeepResolver.gather long).Length 2 "futures in the 1st and 8th items"
            Expect.equal (unwrapAs<int * int * int * int * int * int * int * int * string> long) (1, 2, 3, 4, 5, 6, 7, 8, "nine") "9-tuple"
            let kv = KeyValuePair("k", done' 3)
            Expect.equal (unwrapAs<KeyValuePair<string, int>> kv) (KeyValuePair("k", 3)) "KeyValuePair"
        }
        test "AppFutures from a kernel, in an array and an obj list" {
            use dfk = load id
            let square = App.func dfk (fun (x: int) -> x * x)
            let fs = [| square (Arg.value 2); square (Arg.value 3) |]
            for f in fs do
                await f.Task |> ignore
            Expect.equal (unwrapAs<int[]> fs) [| 4; 9 |] "AppFuture<int>[] -> int[]"
            Expect.equal (unwrapAs<obj list> [ box fs[0]; box "x" ]) [ box 4; box "x" ] "obj list keeps its type"
        }
        test "a non-generic Task, and an async method's Task, resolve to null" {
            let plain = Task.CompletedTask
            let asyncTask = (fun () -> task { do! Task.Yield() }) () :> Task
            asyncTask.Wait(TimeSpan.FromSeconds 60.0) |> ignore
            Expect.equal (unwrapAs<obj list> [ box plain; box asyncTask; box 1 ]) [ null; null; box 1 ] "no results"
        }
    ]

let private structure =
    testList "structure" [
        test "nesting at any depth, with element types substituted at every level" {
            let v: obj list = [ box [| done' 1 |]; box (List [ done' 2 ]); box (Map [ "m", [ done' 3 ] ]); box (done' 4, [ box (done' 5) ]) ]
            Expect.equal (DeepResolver.gather v).Length 5 "five futures at different depths"
            match unwrapAs<obj list> v with
            | [ (:? (int[]) as a); (:? List<int> as l); (:? Map<string, int list> as m); (:? (int * obj list) as t) ] ->
                Expect.equal a [| 1 |] "array"
                Expect.sequenceEqual l [ 2 ] "List<int>"
                Expect.equal m (Map [ "m", [ 3 ] ]) "map of lists"
                Expect.equal t (4, [ box 5 ]) "tuple holding a list"
            | other -> failtestf "wrong shape: %A" other
        }
        test "values without futures come back as the same object" {
            let values: obj list =
                [ box [| 1; 2 |]; box [ box 1; box "a" ]; box (box 1, 2); box (List<obj>([ box "x" ])); box "text"; box 42
                  box (Map [ "k", box 1 ]); box (Dictionary<obj, obj>()) ]
            for v in values do
                Expect.isEmpty (DeepResolver.gather v) (sprintf "no futures in %A" v)
                same (DeepResolver.unwrap v) v (sprintf "%s is not copied" (v.GetType().Name))
            Expect.isEmpty (DeepResolver.gather null) "null"
            Expect.isNull (DeepResolver.unwrap null) "null stays null"
        }
        test "a future's own result is not walked into" {
            let inner = done' 1
            let outer = done' (List [ inner ])
            Expect.sequenceEqual (DeepResolver.gather [ outer ]) [ box outer ] "only the outer future"
            match unwrapAs<List<Task<int>> list> [ outer ] with
            | [ l ] -> same l[0] inner "the inner future is left as it is"
            | other -> failtestf "wrong shape: %A" other
        }
        test "a container holding itself is a clear error, not a stack overflow" {
            let l = List<obj>()
            l.Add(box l)
            l.Add(box (done' 1))
            try
                DeepResolver.gather l |> ignore
                failtest "a cycle was walked without error"
            with :? ArgumentException as e ->
                Expect.stringContains e.Message "cycle" "says what is wrong"
        }
        test "shared (not cyclic) sub-values are fine" {
            let shared = [| done' 1 |]
            Expect.equal (unwrapAs<int[] list> [ shared; shared ]) [ [| 1 |]; [| 1 |] ] "both copies resolved"
        }
    ]

let private endToEnd =
    testList "through the kernel" [
        test "Deep waits for futures inside an obj list and passes their results" {
            use dfk = load (fun c -> { c with DependencyResolver = Deep })
            let gate = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let slow = App.async dfk (fun (x: int) (_: CancellationToken) -> afterGate gate x)
            let external = TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously)
            let f1, f2 = slow (Arg.value 1), slow (Arg.value 2)
            let sum = App.func dfk (fun (xs: obj list) -> xs |> List.sumBy unbox<int>)
            let r = sum (Arg.value [ box f1; box f2; box external.Task ])
            gate.SetResult()
            external.SetResult 10
            Expect.equal (await r.Task) 13 "the app got 1 + 2 + 10, not futures"
        }
        test "Deep waits for futures in an obj[] nested in a tuple" {
            use dfk = load (fun c -> { c with DependencyResolver = Deep })
            let gate = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let slow = App.async dfk (fun (x: int) (_: CancellationToken) -> afterGate gate x)
            let f = slow (Arg.value 5)
            let describe = App.func dfk (fun (label: string, xs: obj[]) -> sprintf "%s=%A" label (xs |> Array.map unbox<int>))
            let r = describe (Arg.value ("xs", [| box f; box 6 |]))
            gate.SetResult()
            Expect.equal (await r.Task) "xs=[|5; 6|]" "nested future resolved"
        }
        test "Deep: a failed nested future fails the task with DependencyError naming it" {
            use dfk = load (fun c -> { c with DependencyResolver = Deep })
            let boom = App.func dfk (fun (_: int) -> failwith "deliberate" : int)
            let f = boom (Arg.value 0)
            let count = App.func dfk (fun (xs: obj list) -> xs.Length)
            let r = count (Arg.value [ box f ])
            match errorOf r with
            | :? DependencyError as e -> Expect.equal (List.ofSeq e.Dependencies) [ f.TaskId ] "names the failed task"
            | e -> failtestf "expected DependencyError, got %O" e
        }
        test "Shallow (the default) does not wait for nested futures: the app gets the futures themselves" {
            // Three threads: the two gated tries hold theirs, the third runs the app under test.
            use dfk = load (fun c -> { c with Executors = [ Parsl.Executors.ThreadPoolExecutor("threads", 3) ] })
            let gate = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            try
                let slow = App.async dfk (fun (x: int) (_: CancellationToken) -> afterGate gate x)
                let f1, f2 = slow (Arg.value 1), slow (Arg.value 2)
                let kinds = App.func dfk (fun (xs: obj list) -> xs |> List.map (fun x -> x :? AppFuture))
                let r = kinds (Arg.value [ box f1; box f2 ])
                // Completes while the gate is still closed: it did not wait.
                Expect.equal (await r.Task) [ true; true ] "the app saw AppFutures"
                Expect.isFalse f1.IsCompleted "the nested futures were still running"
                gate.SetResult()
                Expect.equal (await f2.Task) 2 "they finish afterwards"
            finally
                // Never leave gated tries running: disposal waits for them.
                gate.TrySetResult() |> ignore
        }
    ]

let tests = testList "DeepResolver" [ containers; structure; endToEnd ]
