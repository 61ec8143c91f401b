namespace Parsl.Node.HighThroughput

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Diagnostics
open System.IO
open System.Reflection
open System.Runtime.Loader
open System.Threading
open System.Threading.Tasks
open Parsl
open Parsl.Node
open Parsl.Node.Runtime

/// The worker process's loop (Parsl's `worker` in `process_worker_pool.py`): reads batches of tries from
/// its manager's local socket, runs them one after another, and writes their results back in batches.
/// Standard output and error stay the user's: what a task prints goes to the block's output files.
[<RequireQualifiedAccess>]
module Worker =
    type private Loaded =
        { Function: Delegate
          Parameters: ParameterInfo[]
          TakesToken: bool }


    let private unwrap (e: exn) = TaskResults.unwrap e

    /// The messages of an exception and its inner exceptions, outermost first.
    let rec chain (e: exn) =
        if isNull e.InnerException then e.Message else e.Message + " <- " + chain e.InnerException

    /// What a raised exception becomes on the wire; Parsl's own errors carry what rebuilds them.
    let describe (e: exn) : WireOutcome =
        let e = unwrap e
        let data =
            match e with
            | :? BashExitFailure as b -> [ b.AppName; string b.ExitCode ]
            | :? MissingOutputs as m -> List.ofSeq m.Outputs
            | _ -> []
        Raised(e.GetType().FullName, e.Message, (if isNull e.StackTrace then "" else e.StackTrace), data)

    // The worker's one thread runs the body: an async body's Task is waited for here (this process has nothing else
    // to do meanwhile), then read without reflection per call.
    let private resultOf (v: obj) : obj =
        match v with
        | :? Task as t ->
            t.GetAwaiter().GetResult()
            TaskResults.value t
        | v -> v

    /// Starts MessagePack's one-time set-up (its assembly, the resolvers' tables) on a thread of its own, to run
    /// while this process connects to its manager instead of after. The caller owns the thread: it joins it before
    /// the process ends (it takes milliseconds; the join only makes sure it is not cut off half-way).
    let prime () : Thread =
        let run () =
            try
                let o = Serialization.options (fun _ -> false)
                // A number and a string there and back: the built-in formatters' tables, as a first result needs.
                for v in [ box 0; box "" ] do
                    Serialization.deserialize o (Serialization.serialize o "a value" v) |> ignore
            with _ -> ()
        let t = Thread(run, IsBackground = true, Name = "prime")
        t.Start()
        t

    /// Connects to the manager and says which worker slot (rank and start generation) this process is; the
    /// manager takes this hello as "up". Returns the connection's stream.
    let connect (name: string) (rank: int) (generation: int) : Stream =
        // The manager listens just after starting this process: a refusal in the first second means "not yet".
        let deadline = DateTime.UtcNow.AddSeconds 1.0
        let rec attempt () =
            try LocalSocket.connectStream name
            with :? IOException when DateTime.UtcNow < deadline ->
                Thread.Sleep 5
                attempt ()
        let stream = attempt ()
        Frames.write stream (Text.Encoding.UTF8.GetBytes(String.Join(" ", rank, generation, Environment.ProcessId)))
        stream.Flush()
        stream

    /// Watches the manager's end of a worker's connection from a thread of its own, which calls `onGone` once it has
    /// hung up (the manager ended or was killed) and then ends. While a try runs, the worker's own thread is inside it
    /// and reads nothing, so without this a worker whose manager was SIGKILLed would run its try, and a shell app its
    /// command, to the end, with nobody to tell. Only a connection from `connect` (a socket stream) is watched; the
    /// in-process pipes of the Work Queue and TaskVine runners end with their process.
    let private watchManager (input: Stream) (onGone: unit -> unit) : Thread option =
        match input with
        | :? FileStream as socket when OperatingSystem.IsLinux() ->
            let fd = int (socket.SafeFileHandle.DangerousGetHandle())
            let t = Thread((fun () -> Native.waitHangUp fd; onGone ()), IsBackground = true, Name = "manager-watch")
            t.Start()
            Some t
        | _ -> None

    /// Runs the worker until its manager's connection closes; returns the process exit code.
    let run (input: Stream) (output: Stream) : int =
        let paths = ConcurrentDictionary<string, string>()
        let functions = Dictionary<int, Loaded>()
        AssemblyLoadContext.Default.add_Resolving(fun ctx name ->
            match paths.TryGetValue name.Name with
            | true, p -> ctx.LoadFromAssemblyPath p
            | _ -> null)
        let opts = Serialization.options (fun n -> paths.ContainsKey n)
        // The codecs compile while the first batch is on its way (the manager is still registering).
        let warm = Thread((fun () -> if not (Serialization.precompiled ()) then Serialization.warmUp opts), IsBackground = true, Name = "warm-up")
        warm.Start()
        let host = Environment.MachineName
        // Everything written to the manager goes out under this lock: the main thread's result batches, a shell
        // app's process group, and a walltime's verdict from its timer's thread. (The worker is not an actor with
        // handlers: its one thread is inside the user's code when a deadline fires, so what they share is only the
        // output stream and the running try's key and group, held for a write each, never across a try.)
        let outLock = obj ()
        let results = List<WireResult>()
        let flush () =
            if results.Count > 0 then
                Frames.write output (Protocol.encodeFromWorker (Done(List.ofSeq results)))
                output.Flush()
                results.Clear()
        // The try running now (`noTry`: none; 0 is task 0's first try) and its shell app's process group (0: none).
        let noTry = Int64.MinValue
        let runningKey = ref noTry
        let runningGroup = ref 0
        // The manager has gone (its end of the connection hung up): no try starts from now on.
        let managerGone = ref false
        let watcher = watchManager input (fun () ->
            lock outLock (fun () ->
                managerGone.Value <- true
                if runningKey.Value <> noTry then
                    // Nobody will take the result, and only ending this process stops a function app. What the try
                    // started goes first (a shell app is in a group of its own, beyond this process's death); all of this
                    // process's descendants, so that a command started a moment ago and not yet recorded goes too.
                    Native.killDescendants ()
                    Process.GetCurrentProcess().Kill()))
        // Asked to stop (the block is being cancelled): the running shell app's group goes with this process;
        // it is in a group of its own, so the signal that reached this process did not reach it.
        use _term =
            Runtime.InteropServices.PosixSignalRegistration.Create(
                Runtime.InteropServices.PosixSignal.SIGTERM,
                fun _ -> lock outLock (fun () -> if runningGroup.Value > 0 then Native.killGroup runningGroup.Value))

        let load (fid: int) (def: byte[]) =
            if not (isNull def) && not (functions.ContainsKey fid) then
                let refs, body = Serialization.decodeDefinition def
                for r in refs do
                    paths[AssemblyName(r.FullName).Name] <- r.Path
                let d = Serialization.deserialize opts body :?> Delegate
                let ps = d.Method.GetParameters()
                let takes = ps.Length > 0 && ps[ps.Length - 1].ParameterType = typeof<CancellationToken>
                functions[fid] <- { Function = d; Parameters = ps; TakesToken = takes }

        let runOne (t: WireTask) : WireOutcome =
            match t.Body with
            | Call(fid, def, args, wall) ->
                match (try load fid def; None with e -> Some(unwrap e)) with
                | Some e -> Unserializable(sprintf "the function of app %s could not be loaded on the worker: %s" t.AppName (chain e))
                | None ->
                    match functions.TryGetValue fid with
                    | false, _ -> Unserializable(sprintf "the function of app %s was never sent to this worker" t.AppName)
                    | true, f ->
                        match (try Ok(Serialization.deserializeArgs opts f.Parameters args) with e -> Error(unwrap e)) with
                        | Error e -> Unserializable(sprintf "the arguments of app %s could not be deserialized on the worker: %s" t.AppName (chain e))
                        | Ok a ->
                            // A token source only for a body that takes a token or has a walltime: none on the common path.
                            use cts = if f.TakesToken || wall >= 0L then new CancellationTokenSource() else null
                            let a = if f.TakesToken then Array.append a [| box cts.Token |] else a
                            // At the deadline the try fails with AppTimeout and this process ends: a thread cannot be
                            // stopped, a process can, and the manager starts a new worker.
                            let deadline () =
                                lock outLock (fun () ->
                                    if runningKey.Value = t.Key then
                                        (try cts.Cancel() with _ -> ())
                                        results.Add
                                            { Key = t.Key
                                              Outcome =
                                                Raised(
                                                    typeof<AppTimeout>.FullName,
                                                    sprintf "Function app %s ran past its walltime of %g s; its worker was stopped" t.AppName (float wall / 1000.0),
                                                    "",
                                                    []) }
                                        (try flush () with _ -> ())
                                        Process.GetCurrentProcess().Kill())
                            use _timer =
                                if wall >= 0L then new Timer((fun _ -> deadline ()), null, wall, Timeout.Infinite) else null
                            match (try Ok(resultOf (f.Function.DynamicInvoke a)) with e -> Error e) with
                            | Error e -> describe e
                            | Ok v ->
                                match (try Ok(Serialization.serialize opts ("the result of app " + t.AppName) v) with e -> Error e) with
                                | Ok b -> Value b
                                | Error e -> Unserializable e.Message
            | Command(cmd, out, err, wall, outputs) ->
                let std (s: WireStream option) =
                    s |> Option.map (fun s -> if s.Truncate then Truncate s.Path else Append s.Path)
                let call =
                    { AppName = t.AppName
                      BuildCommand = fun () -> cmd
                      Stdout = std out
                      Stderr = std err
                      Walltime = (if wall >= 0L then Some(TimeSpan.FromMilliseconds(float wall)) else None)
                      Outputs = outputs }
                let started pgid =
                    lock outLock (fun () ->
                        runningGroup.Value <- pgid
                        Frames.write output (Protocol.encodeFromWorker (GroupStarted(t.Key, pgid)))
                        output.Flush())
                let outcome = (try Ok(Shell.runWith started call CancellationToken.None) with e -> Error e)
                lock outLock (fun () -> runningGroup.Value <- 0)
                match outcome with
                | Ok v -> Value(Serialization.serialize opts "a shell app's exit code" v)
                | Error e -> describe e

        // Monitoring's radio, when the launch command turned it on: `running`, `running_ended` and samples per try.
        use radio = match Parsl.Node.Monitoring.ResourceRadio.FromEnvironment() with Some r -> r | None -> null
        let clock = Stopwatch.StartNew()
        let mutable go = true
        while go do
            match Frames.read input with
            | None -> go <- false
            | Some frame ->
                let (Run tasks) = Protocol.decodeToWorker frame
                let lastFlush = ref clock.Elapsed
                for t in tasks |> Seq.takeWhile (fun _ -> not (lock outLock (fun () -> managerGone.Value))) do
                    lock outLock (fun () -> runningKey.Value <- t.Key)
                    if not (isNull radio) then radio.Begin t.Key
                    // MPI: the try's resource values (PARSL_MPI_PREFIX, PARSL_NUM_RANKS, ...) are in the environment
                    // while it runs, for a shell app's command and a function app alike (Parsl's `_init_mpi_env`).
                    for k, v in t.Resources do
                        Environment.SetEnvironmentVariable("PARSL_" + k.ToUpperInvariant(), v)
                    let outcome = runOne t
                    for k, _ in t.Resources do
                        Environment.SetEnvironmentVariable("PARSL_" + k.ToUpperInvariant(), null)
                    if not (isNull radio) then radio.End t.Key
                    lock outLock (fun () ->
                        runningKey.Value <- noTry
                        results.Add { Key = t.Key; Outcome = outcome }
                        // Long batches still report as they go, so results are not held back behind slow tasks.
                        if (clock.Elapsed - lastFlush.Value).TotalMilliseconds > 2.0 then
                            flush ()
                            lastFlush.Value <- clock.Elapsed)
                lock outLock flush
        warm.Join()
        // The connection has ended, so the watcher's wait has too.
        watcher |> Option.iter (fun t -> t.Join())
        0
