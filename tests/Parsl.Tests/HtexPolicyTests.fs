module Parsl.Tests.HtexPolicyTests

open System
open Expecto
open FsCheck
open Parsl
open Parsl.Jobs
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput

/// A record that travels as a typeless value (extension, type name, fields).
type Tagged = { Html: string; Count: int }

let private input kind first tasks running pending perNode minB maxB par idle =
    { Kind = kind
      FirstPoll = first
      ActiveTasks = tasks
      RunningBlocks = running
      PendingBlocks = pending
      TasksPerNode = perNode
      NodesPerBlock = 1
      InitBlocks = 1
      MinBlocks = minB
      MaxBlocks = max minB maxB
      Parallelism = par
      MaxIdleTime = TimeSpan.FromSeconds 10.0
      Now = DateTime(2026, 1, 1).AddSeconds 100.0
      IdleSince = idle }

let private kinds = [| NoScaling; StrategyKind.Simple; HtexAutoScale |]

let strategy =
    testList "HTEx strategy" [
        testProperty "scaling out never exceeds max_blocks, scaling in never goes below min_blocks" (fun (k: int) (tasks: uint16) (running: byte) (pending: byte) (perNode: byte) (minB: byte) (maxB: byte) (par: byte) (idle: bool) ->
            let minB, maxB = int minB % 5, int maxB % 8
            let i =
                input kinds[abs k % 3] false (int tasks % 500) (int running % 8) (int pending % 4) (1 + int perNode % 4) minB maxB
                    (float (par % 11uy) / 10.0) (if idle then Some(DateTime(2026, 1, 1)) else None)
            let active = i.RunningBlocks + i.PendingBlocks
            match (Strategy.decide i).Decision with
            | ScaleOut n -> n > 0 && active + n <= i.MaxBlocks
            | ScaleIn(n, _) -> n > 0 && active - n >= i.MinBlocks
            | NoChange -> true)
        testProperty "'none' only ever starts init_blocks on the first poll" (fun (tasks: uint16) (running: byte) ->
            let i = input NoScaling false (int tasks) (int running % 5) 0 1 0 10 1.0 None
            (Strategy.decide i).Decision = NoChange
            && (Strategy.decide { i with FirstPoll = true }).Decision = ScaleOut 1)
        testProperty "'simple' never scales in while tasks are outstanding" (fun (tasks: uint16) (running: byte) ->
            let i = input StrategyKind.Simple false (1 + int tasks % 100) (int running % 8) 0 4 0 8 1.0 None
            match (Strategy.decide i).Decision with
            | ScaleIn _ -> false
            | _ -> true)
        test "idle blocks are scaled in only after max_idletime" {
            let i = input HtexAutoScale false 0 2 0 1 0 4 1.0 None
            let first = Strategy.decide i
            Expect.equal first.Decision NoChange "starts the idle timer"
            Expect.isSome first.IdleSince "timer set"
            let later = Strategy.decide { i with IdleSince = Some(i.Now.AddSeconds -11.0) }
            Expect.equal later.Decision (ScaleIn(2, None)) "down to min_blocks"
        }
        test "load beyond the slots scales out by the missing blocks" {
            let i = input StrategyKind.Simple false 10 1 0 2 0 4 1.0 None
            Expect.equal (Strategy.decide i).Decision (ScaleOut 3) "ceil((10 - 2) / 2) = 4, capped at max_blocks - active = 3"
        }
    ]

let policies =
    testList "HTEx policies" [
        testProperty "the queue order is Parsl's: lower priority first, FIFO among equals, unprioritised last" (fun (ps: int option list) ->
            let items = ps |> List.mapi (fun i p -> p, Policies.order (match p with Some v -> box v | None -> null) (int64 i))
            let sorted = items |> List.sortWith (fun (_, a) (_, b) -> compare a b) |> List.map (fun (p, o) -> p, o.Sequence)
            let expected =
                items
                |> List.map (fun (p, o) -> p, o.Sequence)
                |> List.sortBy (fun (p, s) -> (match p with Some _ -> 0 | None -> 1), (defaultArg p 0), s)
            sorted = expected)
        testProperty "a priority queue on QueueOrder (the generic comparison the interchange's heap uses) drains in Parsl's order" (fun (ps: int option list) ->
            let items = ps |> List.mapi (fun i p -> p, Policies.order (match p with Some v -> box v | None -> null) (int64 i))
            let heap = System.Collections.Generic.PriorityQueue<int64, QueueOrder>()
            for _, o in items do
                heap.Enqueue(o.Sequence, o)
            let drained = [ while heap.Count > 0 do yield heap.Dequeue() ]
            let expected =
                items
                |> List.sortBy (fun (p, o) -> (match p with Some _ -> 0 | None -> 1), (defaultArg p 0), o.Sequence)
                |> List.map (fun (_, o) -> o.Sequence)
            drained = expected)
        testProperty "dispatch never exceeds a manager's free capacity and sends all it can" (fun (caps: byte list) (queued: uint16) ->
            let views =
                caps
                |> List.mapi (fun i c ->
                    { ManagerId = string i; BlockId = string i; FreeCapacity = int c % 20; Draining = false; Active = true })
                |> Array.ofList
            let ordered = Policies.selectManagers BlockIdSelector id views
            let plan = Policies.dispatch ordered (int queued)
            let cap m = (views |> Array.find (fun v -> v.ManagerId = m)).FreeCapacity
            plan |> List.forall (fun (m, n) -> n > 0 && n <= cap m)
            && List.sumBy snd plan = min (int queued) (views |> Array.sumBy (fun v -> v.FreeCapacity)))
        testProperty "draining, held and full managers are never offered tasks" (fun (ms: (bool * bool * byte) list) ->
            let views =
                ms |> List.mapi (fun i (d, a, c) -> { ManagerId = string i; BlockId = string i; FreeCapacity = int c % 3; Draining = d; Active = a })
            Policies.selectManagers RandomSelector id views |> Array.forall (fun v -> v.Active && not v.Draining && v.FreeCapacity > 0))
        test "the block-id selector prefers the newest block" {
            let v i = { ManagerId = string i; BlockId = string i; FreeCapacity = 1; Draining = false; Active = true }
            let ordered = Policies.selectManagers BlockIdSelector id [ v 2; v 10; v 1 ]
            Expect.equal (ordered |> Array.map (fun m -> m.BlockId)) [| "10"; "2"; "1" |] "numeric, newest first"
        }
        testProperty "worker count is at least 1 and within every bound" (fun (maxW: byte) (cores: byte) (mem: byte) (acc: byte) ->
            let maxW, cores, acc = 1 + int maxW % 16, 1 + int cores % 64, int acc % 4
            let n = Policies.workerCount (Some maxW) cores 1.0 (Some(float mem)) (Some 1.0) acc
            n >= 1 && (n = 1 || (n <= maxW && n <= cores && n <= int mem && (acc = 0 || n <= acc))))
        testProperty "block affinity gives workers disjoint cores" (fun (workers: byte) ->
            let cores = 8
            let w = 1 + int workers % cores
            let sets = [ for r in 0 .. w - 1 -> Policies.coresFor BlockAffinity cores w r ]
            let all = List.concat sets
            List.length all = List.length (List.distinct all) && sets |> List.forall (fun s -> not s.IsEmpty))
        test "affinity lists parse, and bad ones name the accepted forms" {
            Expect.equal (Policies.parseAffinity "list:0-1,4:2-3") (Ok(CoreList [ [ 0; 1; 4 ]; [ 2; 3 ] ])) "list"
            match Policies.parseAffinity "sideways" with
            | Error e -> Expect.stringContains e "block" "names the forms"
            | Ok _ -> failtest "accepted a bad setting"
        }
    ]

let protocol =
    testList "HTEx protocol" [
        testProperty "tasks round-trip through the wire encoding" (fun (key: int64) (app: NonNull<string>) (cmd: NonNull<string>) (wall: int64) (outs: NonNull<string> list) (args: byte[]) (res: (NonNull<string> * NonNull<string>) list) ->
            // MPI: with and without resource values.
            let res = res |> List.map (fun (k, v) -> k.Get, v.Get)
            let tasks =
                [ for r in [ []; res ] do
                    { WireTask.Key = key; AppName = app.Get; Body = Call(3, null, args, max -1L wall); Resources = r }
                    { WireTask.Key = key; AppName = app.Get; Body = Command(cmd.Get, Some { Path = cmd.Get; Truncate = true }, None, wall, outs |> List.map (fun o -> o.Get)); Resources = r } ]
            Protocol.decodeToManager (Protocol.encodeToManager (Tasks tasks)) = Tasks tasks)
        testProperty "results round-trip through the wire encoding" (fun (key: int64) (t: NonNull<string>) (data: NonNull<string> list) (v: byte[]) ->
            let rs =
                [ { Key = key; Outcome = Value v }
                  { Key = key; Outcome = Raised(t.Get, t.Get, t.Get, data |> List.map (fun d -> d.Get)) }
                  { Key = key; Outcome = Unserializable t.Get }
                  { Key = key; Outcome = WorkerDied(3, t.Get) } ]
            Protocol.decodeToInterchange (Protocol.encodeToInterchange (Results rs)) = Results rs)
        testProperty "task keys carry the task and try ids" (fun (id: int) (tryId: int) ->
            Protocol.ofKey (Protocol.key id tryId) = (id, tryId))
    ]

let serialization =
    let opts = Serialization.options (fun _ -> true)
    testList "HTEx serialization" [
        test "a closure capturing values is rebuilt from its fields" {
            let k = 40 + DateTime.Now.Second % 1
            let text = "x"
            let f = Func<int, string>(fun x -> sprintf "%s%d" text (x + k))
            let back = Serialization.deserialize opts (Serialization.serialize opts "f" (box f)) :?> Func<int, string>
            Expect.equal (back.Invoke 2) "x42" "captured values survive"
        }
        testProperty "F# lists, options and unions round-trip" (fun (xs: int list) (o: string option) ->
            let v = box (xs, o, Some(Choice1Of2 xs: Choice<int list, string>))
            Serialization.deserialize opts (Serialization.serialize opts "v" v) = v)
        testProperty "values typed obj are written byte for byte as MessagePack's typeless formatter writes them" (fun (i: int) (l: int64) (d: float) (b: bool) (t: NonNull<string>) (bs: byte[]) (xs: int list) ->
            // The reference: MessagePack's own typeless resolution of obj, over the same resolvers.
            let reference =
                MessagePack.MessagePackSerializerOptions(
                    MessagePack.Resolvers.CompositeResolver.Create(
                        [| MessagePack.Resolvers.NativeDateTimeResolver.Instance :> MessagePack.IFormatterResolver
                           MessagePack.Resolvers.BuiltinResolver.Instance
                           MessagePack.Resolvers.DynamicGenericResolver.Instance
                           MessagePack.Resolvers.DynamicContractlessObjectResolverAllowPrivate.Instance
                           MessagePack.Resolvers.TypelessObjectResolver.Instance |]))
            let point = { Html = t.Get; Count = i }
            let sameBytes =
                [ box i; box l; box d; box b; box t.Get; box bs; box (Array.ofList xs); box point; null ]
                |> List.forall (fun v -> Serialization.serialize opts "v" v = MessagePack.MessagePackSerializer.Serialize<obj>(v, reference))
            let back = Serialization.deserialize opts (Serialization.serialize opts "v" (box point))
            sameBytes && back = box point)
        test "code compiled in memory cannot be shipped, and the error names the fix" {
            let dm = Reflection.Emit.DynamicMethod("answer", typeof<int>, [| typeof<int> |])
            let il = dm.GetILGenerator()
            il.Emit(Reflection.Emit.OpCodes.Ldc_I4, 42)
            il.Emit(Reflection.Emit.OpCodes.Ret)
            let d = dm.CreateDelegate(typeof<Func<int, int>>)
            let e = Expect.throwsC (fun () -> Serialization.encodeDefinition opts [] d |> ignore) id
            Expect.isTrue (e :? SerializationError) "SerializationError"
            Expect.stringContains e.Message "ThreadPoolExecutor" "names the fix"
        }
        test "options are validated with errors naming the field" {
            let errs = HtexOptions.validate { HtexOptions.defaults () with PrefetchCapacity = -1; CpuAffinity = "bogus"; HeartbeatThreshold = TimeSpan.FromSeconds 1.0 }
            let fields = errs |> List.map (fun e -> e.Field)
            Expect.contains fields "HighThroughputExecutor.PrefetchCapacity" "prefetch"
            Expect.contains fields "HighThroughputExecutor.CpuAffinity" "affinity"
            Expect.contains fields "HighThroughputExecutor.HeartbeatThreshold" "threshold below period"
        }
    ]

let tests = testList "HTEx pure" [ strategy; policies; protocol; serialization ]
