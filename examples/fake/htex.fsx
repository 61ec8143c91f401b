// Shell apps on a HighThroughputExecutor, from a script: worker processes run the commands.
// Build the library and the worker executable once, then run:
//   dotnet build src/Parsl.Workers -c Release
//   dotnet fsi examples/fake/htex.fsx
// A script is compiled in memory, so worker processes cannot load its functions. A shell app's command line is
// built here, in the script, and only the string travels to a worker. A function app defined here and sent to
// the HighThroughputExecutor fails its task with a SerializationError naming the fix; on the ThreadPoolExecutor
// it runs.
#r "nuget: Serilog, 4.4.0"
#r "nuget: Serilog.Sinks.File, 7.0.0"
#r "nuget: NetMQ, 4.0.4.5"
#r "nuget: MessagePack, 2.5.307"
#r "../../src/Parsl.Core.FSharp/bin/Release/net10.0/Parsl.Node.dll"
#r "../../src/Parsl.Core.FSharp/bin/Release/net10.0/Parsl.Core.FSharp.dll"

open System
open System.IO
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput

let root = Path.GetFullPath(Path.Combine(__SOURCE_DIRECTORY__, "..", ".."))
// The default worker command looks next to the application, which for a script is the .NET SDK: name it.
let workers = Path.Combine(root, "src", "Parsl.Workers", "bin", "Release", "net10.0", "Parsl.Workers.dll")

if not (File.Exists workers) then
    failwithf "%s is missing: run `dotnet build src/Parsl.Workers -c Release` first" workers

let out = Path.Combine(Path.GetTempPath(), sprintf "parsl-htex-script-%d" Environment.ProcessId)

if Directory.Exists out then Directory.Delete(out, true)
Directory.CreateDirectory out |> ignore

let dfk =
    DataFlowKernel.Load
        { Config.defaults with
            Executors =
                [ HighThroughputExecutor
                      { HtexOptions.defaults () with
                          Label = "htex"
                          MaxWorkersPerNode = Some 4
                          WorkerCommand = Some [ "dotnet"; workers ] }
                  ThreadPoolExecutor("local", 2) ]
            RunDir = Path.Combine(__SOURCE_DIRECTORY__, "runinfo") }

let on label = { AppOptions.defaults with Executors = [ label ] }
let file i = Path.Combine(out, sprintf "part%d.txt" i)

try
    // Each command line is built here from the arguments; a worker process runs it with bash.
    let generate =
        App.shellWith dfk { on "htex" with Name = Some "generate" } (fun (i: int) ->
            sprintf "seq 1 %d > '%s'" (100 * i) (file i))

    let parts = [ for i in 1..6 -> generate (Arg.value i) ]
    let total = Path.Combine(out, "total.txt")

    let sum =
        App.shellWith dfk { on "htex" with Name = Some "sum"; Stdout = Some(PathMode(total, "w")) } (fun (_: int[]) ->
            sprintf "cat %s | awk '{ s += $1 } END { print s }'" (String.Join(" ", [ for i in 1..6 -> sprintf "'%s'" (file i) ])))

    sum (Arg.all parts) |> AppFuture.get |> ignore
    printfn "sum of the 6 generated parts: %s" (File.ReadAllText(total).Trim())

    // The shell's parent is the worker process that ran it.
    let whoRan = Path.Combine(out, "parent.txt")
    let parent = App.shellWith dfk { on "htex" with Name = Some "parent"; Stdout = Some(PathMode(whoRan, "w")) } (fun () -> "tr '\\0' ' ' < /proc/$PPID/cmdline")
    parent (Arg.value ()) |> AppFuture.get |> ignore
    let ranBy = File.ReadAllText(whoRan)
    printfn "shell apps ran in: %s" (if ranBy.Contains "Parsl.Workers" then "a Parsl.Workers process" else ranBy)

    // A function app defined in this script cannot be shipped to worker processes...
    let double label = App.funcWith dfk (on label) (fun (x: int) -> 2 * x)

    match (try Ok((double "htex" (Arg.value 21)).Result) with e -> Error e) with
    | Ok v -> printfn "function app on htex returned %d (unexpected)" v
    | Error e -> printfn "function app on htex: %s: %s" (e.GetType().Name) e.Message
    // ...and runs on the thread pool of this process.
    printfn "function app on the thread pool: %d" (double "local" (Arg.value 21)).Result
finally
    dfk.CleanupAsync().Wait()
    Directory.Delete(out, true)
