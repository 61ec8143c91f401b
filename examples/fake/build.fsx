// A FAKE build script that fans its shell build steps out in parallel through Parsl.NET.
// Build the library once (`dotnet build src/Parsl.Core.FSharp -c Release`), then run:
//   dotnet fsi examples/fake/build.fsx            (or: -t Compile, -t Link, ...)
// Scripts are compiled into dynamic assemblies, which cannot be shipped to other processes: shell apps build
// their command lines here and ship only the strings; function apps run on the thread-pool executor.
#r "nuget: Fake.Core.Target, 5.20.3"
#r "nuget: Serilog, 4.4.0"
#r "nuget: Serilog.Sinks.File, 7.0.0"
#r "../../src/Parsl.Core.FSharp/bin/Release/net10.0/Parsl.Node.dll"
#r "../../src/Parsl.Core.FSharp/bin/Release/net10.0/Parsl.Core.FSharp.dll"

open System
open System.Diagnostics
open System.IO
open Fake.Core
open Fake.Core.TargetOperators
open Parsl
open Parsl.Executors

let args = fsi.CommandLineArgs |> Array.skip 1 |> List.ofArray
Context.setExecutionContext (Context.RuntimeContext.Fake(Context.FakeExecutionContext.Create false "build.fsx" args))

let out = Path.Combine(__SOURCE_DIRECTORY__, "out")
let units = 8

let dfk =
    DataFlowKernel.Load
        { Config.defaults with
            Executors = [ ThreadPoolExecutor("build", Environment.ProcessorCount) :> IExecutor ]
            RunDir = Path.Combine(__SOURCE_DIRECTORY__, "runinfo") }

/// A shell step: `command` is built here from the step's arguments; Parsl runs it and checks its outputs.
let step name outputs (command: 'A -> string) =
    App.shellWith dfk { AppOptions.defaults with Name = Some name; Outputs = outputs } command

Target.create "Clean" (fun _ ->
    if Directory.Exists out then Directory.Delete(out, true)
    Directory.CreateDirectory out |> ignore)

Target.create "Generate" (fun _ ->
    for i in 1..units do
        File.WriteAllText(Path.Combine(out, sprintf "unit%d.c" i), sprintf "int unit%d(void) { return %d; }\n" i i)
    let decls = String.Join("\n", [ for i in 1..units -> sprintf "int unit%d(void);" i ])
    let calls = String.Join(" + ", [ for i in 1..units -> sprintf "unit%d()" i ])
    File.WriteAllText(
        Path.Combine(out, "main.c"),
        sprintf "#include <stdio.h>\n%s\nint main(void) { printf(\"sum of %d units = %%d\\n\", %s); return 0; }\n" decls units calls))

Target.create "Build" (fun _ ->
    let clock = Stopwatch.StartNew()
    let sources = [ for i in 1..units -> sprintf "unit%d" i ] @ [ "main" ]
    // Every compilation is submitted at once and runs in parallel; each future fails if gcc does.
    let objects =
        [ for s in sources ->
              let o = Path.Combine(out, s + ".o")
              let compile = step ("cc_" + s) [ o ] (fun (src: string) -> sprintf "gcc -c '%s' -o '%s'" src o)
              compile (Arg.value (Path.Combine(out, s + ".c"))) ]
    let exe = Path.Combine(out, "app")
    // The link step depends on every compilation (Parsl's inputs=[...]).
    let link =
        step "link" [ exe ] (fun (_: int[]) ->
            let objs = String.Join(" ", [ for s in sources -> sprintf "'%s'" (Path.Combine(out, s + ".o")) ])
            sprintf "gcc %s -o '%s'" objs exe)
    let run = step "run" [] (fun (_: int) -> sprintf "'%s' > '%s'" exe (Path.Combine(out, "run.txt")))
    // A function app defined in this script: it runs on the thread pool of this process.
    let countLines = App.func dfk (fun (dir: string) -> Directory.GetFiles(dir, "*.c") |> Array.sumBy (File.ReadAllLines >> Array.length))
    let linked = link (Arg.all objects)
    let ran = run (Arg.future linked)
    let lines = countLines (Arg.value out)
    ran.Result |> ignore
    Trace.log (sprintf "compiled %d files in parallel and linked them in %.2f s" sources.Length clock.Elapsed.TotalSeconds)
    Trace.log (sprintf "%d lines of C; the program says: %s" lines.Result (File.ReadAllText(Path.Combine(out, "run.txt")).Trim())))

Target.create "All" ignore

"Clean" ==> "Generate" ==> "Build" ==> "All" |> ignore

try
    Target.runOrDefaultWithArguments "All"
finally
    dfk.CleanupAsync().Wait()
