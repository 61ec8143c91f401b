/// The new user: applications and scripts outside the repository that get Parsl.NET from the packages only, and
/// run function apps on the thread pool, the HighThroughputExecutor, the MPIExecutor and the TaskVineExecutor. Each fails if the user would have to
/// copy anything by hand (the HTEx's worker most of all).
module Parsl.PackageTests.NewUserTests

open System
open System.IO
open System.IO.Compression
open Expecto
open Parsl.PackageTests.Sandbox

let private minutes (m: float) = TimeSpan.FromMinutes m

/// A console app with the thread pool, the HTEx (its worker from the Parsl.Workers package) and the generic host.
let private consoleProgram = """
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Parsl;

await using (var dfk = await Dfk.LoadAsync(new DfkOptions()))
{
    var square = dfk.App((int x) => x * x);
    Console.WriteLine($"threads {await square.Invoke(square.Invoke(3))}");
}

await using (var dfk = await Dfk.LoadAsync(new DfkOptions
{
    Executors = { new HighThroughputExecutorOptions { MaxWorkersPerNode = 1 } },
}))
{
    var square = dfk.App((int x) => x * x);
    var mean = dfk.App((Sample s) => s.Values.Average());
    var pid = dfk.App((int _) => Environment.ProcessId);
    Console.WriteLine($"htex {await square.Invoke(square.Invoke(3))}");
    Console.WriteLine($"htex record {await mean.Invoke(new Sample("a", [1, 2, 6]))}");
    Console.WriteLine($"htex in another process {await pid.Invoke(0) != Environment.ProcessId}");
}

var builder = Host.CreateApplicationBuilder(args);
builder.Services.AddParsl(o => o.Executors.Add(new ThreadPoolExecutorOptions { MaxThreads = 2 }));
using var host = builder.Build();
await host.StartAsync();
var hosted = host.Services.GetRequiredService<Dfk>();
var cube = hosted.App((int x) => x * x * x);
Console.WriteLine($"hosted {await cube.Invoke(3)}");
await host.StopAsync();
Console.WriteLine($"hosted closed {hosted.IsClosed}");

record Sample(string Name, double[] Values);
"""

let private expectLines (output: string) (lines: string list) =
    for l in lines do
        Expect.stringContains output l (sprintf "the program prints %s; it printed:\n%s" l output)

let private consoleApp (sandbox: Lazy<Sandbox>) =
    testCase "a console app gets Parsl.NET with dotnet add package and runs it on the thread pool, the HTEx and a host, built and published" <| fun () ->
        let s = sandbox.Value
        let dir = folder s "console"
        dotnet s dir (minutes 3.0) [ "new"; "console"; "-n"; "NewUser"; "-o"; "." ] |> check "dotnet new console" |> ignore
        for p in [ "Parsl.CSharp"; "Parsl.Workers"; "Parsl.Hosting" ] do
            dotnet s dir (minutes 5.0) [ "add"; "package"; p; "--version"; s.Version ] |> check ("dotnet add package " + p) |> ignore
        dotnet s dir (minutes 5.0) [ "add"; "package"; "Microsoft.Extensions.Hosting"; "--version"; "11.0.0" ]
        |> check "dotnet add package Microsoft.Extensions.Hosting" |> ignore
        File.WriteAllText(Path.Combine(dir, "Program.cs"), consoleProgram)
        let expected = [ "threads 81"; "htex 81"; "htex record 3"; "htex in another process True"; "hosted 27"; "hosted closed True" ]
        let ran = dotnet s dir (minutes 5.0) [ "run"; "-c"; "Release" ] |> check "dotnet run"
        expectLines ran.Output expected
        // Deployed: the published folder alone runs the HTEx (the worker's runtimeconfig is published too).
        let published = Path.Combine(dir, "published")
        dotnet s dir (minutes 5.0) [ "publish"; "-c"; "Release"; "-o"; published ] |> check "dotnet publish" |> ignore
        Expect.isTrue (File.Exists(Path.Combine(published, "Parsl.Workers.runtimeconfig.json"))) "the worker's runtimeconfig is published"
        let deployed = dotnet s (folder s "elsewhere") (minutes 3.0) [ Path.Combine(published, "NewUser.dll") ] |> check "the published app"
        expectLines deployed.Output expected

/// An F# script: function apps defined in a script run on the thread pool; on the HTEx, shell apps (their command
/// lines are built in the script, only strings travel). The worker comes from the package folder, found by itself.
let private fsharpScript (sandbox: Lazy<Sandbox>) =
    testCase "an F# script with #r \"nuget: ...\" runs function apps on the thread pool and shell apps on the HTEx" <| fun () ->
        let s = sandbox.Value
        let dir = folder s "script"
        let script =
            // `#i` adds the feed as a source (beside nuget.config's). It also makes the script's package lines unique to
            // this sandbox: `dotnet fsi` caches what a set of package lines resolved to, across runs, and would
            // otherwise hand a later run the packages of an earlier one.
            sprintf """#i "nuget: %s"
#r "nuget: Parsl.Core.FSharp, %s"
#r "nuget: Parsl.Workers, %s"
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput

let threads = DataFlowKernel.Load Config.defaults
let square = App.func threads (fun (x: int) -> x * x)
printfn "threads %%d" (square (Arg.future (square (Arg.value 3)))).Result
(threads :> System.IDisposable).Dispose()

let htex = HighThroughputExecutor { HtexOptions.defaults () with MaxWorkersPerNode = Some 1 }
let dfk = DataFlowKernel.Load { Config.defaults with Executors = [ htex ] }
let write = App.shell dfk (fun (n: int) -> sprintf "echo $PARSL_WORKER_RANK %%d > from-worker.txt" n)
printfn "htex exit %%d" (write (Arg.value 81)).Result
printfn "htex wrote %%s" (System.IO.File.ReadAllText "from-worker.txt")
printfn "resolved from %%s" (typeof<Config>.Assembly.Location)
(dfk :> System.IDisposable).Dispose()
"""
                s.Feed s.Version s.Version
        File.WriteAllText(Path.Combine(dir, "workflow.fsx"), script)
        let ran = dotnet s dir (minutes 5.0) [ "fsi"; "workflow.fsx" ] |> check "dotnet fsi workflow.fsx"
        // PARSL_WORKER_RANK is set only in a worker started by an HTEx manager.
        expectLines ran.Output [ "threads 81"; "htex exit 0"; "htex wrote 0 81" ]
        // The worker ran from a folder of links to this sandbox's packages, not from anything restored before.
        Expect.stringContains ran.Output s.Packages "the script resolved the sandbox's packages"

/// A C# file-based app (`dotnet run app.cs`, .NET 10): the same packages through `#:package`.
let private fileBasedApp (sandbox: Lazy<Sandbox>) =
    testCase "a C# file-based app with #:package runs function apps on the HTEx" <| fun () ->
        let s = sandbox.Value
        let dir = folder s "filebased"
        let program =
            sprintf """#:package Parsl.CSharp@%s
#:package Parsl.Workers@%s
using Parsl;

await using var dfk = await Dfk.LoadAsync(new DfkOptions
{
    Executors = { new HighThroughputExecutorOptions { MaxWorkersPerNode = 1 } },
});
var square = dfk.App((int x) => x * x);
var pid = dfk.App((int _) => Environment.ProcessId);
Console.WriteLine($"htex {await square.Invoke(square.Invoke(3))}");
Console.WriteLine($"htex in another process {await pid.Invoke(0) != Environment.ProcessId}");
"""
                s.Version s.Version
        File.WriteAllText(Path.Combine(dir, "app.cs"), program)
        let ran = dotnet s dir (minutes 5.0) [ "run"; "app.cs" ] |> check "dotnet run app.cs"
        expectLines ran.Output [ "htex 81"; "htex in another process True" ]

/// An MPI program: every rank adds its rank into the sum, so each line shows the ranks met.
let private mpiHello = """#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, sum;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d size %d sum %d\n", rank, size, sum);
    MPI_Finalize();
    return 0;
}
"""

/// The MPIExecutor from the packages, through the C# options only: a shell app asks for 2 ranks and runs an MPI
/// program under each installed MPI (Open MPI's `mpiexec` is recognised and given its own syntax).
let private mpiApp (sandbox: Lazy<Sandbox>) =
    testCase "a C# file-based app runs a num_ranks = 2 MPI app with MpiExecutorOptions under Open MPI and MPICH" <| fun () ->
        let ready = Harness.require "mpi"
        let s = sandbox.Value
        let dir = folder s "mpi"
        File.WriteAllText(Path.Combine(dir, "hello.c"), mpiHello)
        let compile (cc: string) (name: string) =
            let binary = Path.Combine(dir, name)
            runIn None dir (minutes 2.0) cc [ "-o"; binary; "hello.c" ] |> check cc |> ignore
            binary
        let runs = [ Harness.field ready "openmpi", compile "mpicc.openmpi" "hello-openmpi"; Harness.field ready "mpich", compile "mpicc.mpich" "hello-mpich" ]
        let program =
            sprintf """#:package Parsl.CSharp@%s
#:package Parsl.Workers@%s
using Parsl;

// Open MPI refuses to start as root, or more ranks than cores, unless told so in its environment.
Environment.SetEnvironmentVariable("OMPI_ALLOW_RUN_AS_ROOT", "1");
Environment.SetEnvironmentVariable("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
Environment.SetEnvironmentVariable("OMPI_MCA_rmaps_base_oversubscribe", "1");

// Pairs of arguments: the MPI's mpiexec, and a program built with that MPI.
for (var i = 0; i + 1 < args.Length; i += 2)
{
    var (mpiexec, binary) = (args[i], args[i + 1]);
    var mpi = new MpiExecutorOptions { Label = "mpi", MpiProgram = mpiexec };
    mpi.Htex.HeartbeatPeriod = TimeSpan.FromMilliseconds(200);
    mpi.Htex.StrategyPeriod = TimeSpan.FromMilliseconds(200);
    await using var dfk = await Dfk.LoadAsync(new DfkOptions { Executors = { mpi } });
    var options = new ShellAppOptions();
    new MpiResourceSpecification { NumNodes = 1, NumRanks = 2 }.CopyTo(options.Resources);
    var run = dfk.ShellApp((string output) => $"$PARSL_MPI_PREFIX {binary} > {output}", options);
    var output = binary + ".out";
    Console.WriteLine($"{mpiexec} exit {await run.Invoke(output)}");
    foreach (var line in File.ReadAllLines(output).Order())
        Console.WriteLine($"{mpiexec} {line}");
}
"""
                s.Version s.Version
        File.WriteAllText(Path.Combine(dir, "app.cs"), program)
        let ran =
            dotnet s dir (minutes 5.0) ([ "run"; "app.cs"; "--" ] @ List.collect (fun (m, b) -> [ m; b ]) runs)
            |> check "dotnet run app.cs"
        expectLines ran.Output [ for m, _ in runs do yield! [ m + " exit 0"; m + " rank 0 size 2 sum 1"; m + " rank 1 size 2 sum 1" ] ]

/// The TaskVineExecutor from the packages, through the C# options only: a Local block starts CCTools' real
/// `vine_worker`, which runs the function apps with the .NET runner the Parsl.Workers package put beside the app.
let private taskVineApp (sandbox: Lazy<Sandbox>) =
    testCase "a C# file-based app runs function apps on a real vine_worker with TaskVineExecutorOptions" <| fun () ->
        let vine = Harness.field (Harness.require "taskvine") "vine"
        let s = sandbox.Value
        let dir = folder s "taskvine"
        let program =
            sprintf """#:package Parsl.CSharp@%s
#:package Parsl.Workers@%s
using Parsl;

var tv = new TaskVineExecutorOptions
{
    Label = "tv",
    WorkerExecutable = args[0],
    Provider = new LocalProviderOptions { StatusPollingInterval = TimeSpan.FromMilliseconds(200) },
    StrategyPeriod = TimeSpan.FromMilliseconds(200),
};
foreach (var a in new[] { "-s", args[1], "--cores", "1", "-t", "60" })
    tv.WorkerOptions.Add(a);
await using var dfk = await Dfk.LoadAsync(new DfkOptions { Executors = { tv } });
var square = dfk.App((int x) => x * x);
var pid = dfk.App((int _) => Environment.ProcessId);
Console.WriteLine($"taskvine {await square.Invoke(square.Invoke(3))}");
Console.WriteLine($"taskvine in another process {await pid.Invoke(0) != Environment.ProcessId}");
"""
                s.Version s.Version
        File.WriteAllText(Path.Combine(dir, "app.cs"), program)
        let ran = dotnet s dir (minutes 5.0) [ "run"; "app.cs"; "--"; vine; folder s "vine-sandbox" ] |> check "dotnet run app.cs"
        expectLines ran.Output [ "taskvine 81"; "taskvine in another process True" ]

/// Without the Parsl.Workers package, the HTEx fails at load, naming the option and the package, not after a block
/// has failed to start.
let private withoutWorkers (sandbox: Lazy<Sandbox>) =
    testCase "without the Parsl.Workers package, loading an HTEx is a ConfigurationError naming WorkerCommand and the package" <| fun () ->
        let s = sandbox.Value
        let dir = folder s "noworkers"
        let program =
            sprintf """#:package Parsl.CSharp@%s
using Parsl;

try
{
    await using var dfk = await Dfk.LoadAsync(new DfkOptions { Executors = { new HighThroughputExecutorOptions() } });
    Console.WriteLine("loaded");
}
catch (ConfigurationError e)
{
    Console.WriteLine($"field {e.Field}");
    Console.WriteLine(e.Message);
}
"""
                s.Version
        File.WriteAllText(Path.Combine(dir, "app.cs"), program)
        let ran = dotnet s dir (minutes 5.0) [ "run"; "app.cs" ] |> check "dotnet run app.cs"
        Expect.isFalse (ran.Output.Contains "loaded") "the kernel does not load"
        expectLines ran.Output [ "WorkerCommand"; "dotnet add package Parsl.Workers" ]

/// What a package carries: licence, readme, XML docs, symbols beside it, SourceLink-ready metadata.
let private contents (sandbox: Lazy<Sandbox>) =
    testCase "every package carries the licence, the readme, XML docs, a symbols package and one version" <| fun () ->
        let s = sandbox.Value
        let packages = Directory.GetFiles(s.Feed, "*.nupkg")
        let ids = packages |> Array.map (fun p -> Path.GetFileName p) |> Array.sort
        for id in [ "Parsl.CSharp"; "Parsl.Core.FSharp"; "Parsl.Node"; "Parsl.Workers"; "Parsl.Hosting"; "Parsl.Dashboard"; "Parsl.Cli"; "Parsl.Endpoint" ] do
            Expect.contains ids (sprintf "%s.%s.nupkg" id s.Version) (sprintf "%s is packed with the one version" id)
            Expect.isTrue (File.Exists(Path.Combine(s.Feed, sprintf "%s.%s.snupkg" id s.Version))) (sprintf "%s has symbols" id)
        for p in packages do
            use zip = ZipFile.OpenRead p
            let names = zip.Entries |> Seq.map (fun e -> e.FullName) |> Set.ofSeq
            let nuspec =
                let e = zip.Entries |> Seq.find (fun e -> e.FullName.EndsWith ".nuspec")
                use r = new StreamReader(e.Open())
                r.ReadToEnd()
            let name = Path.GetFileName p
            Expect.isTrue (names.Contains "LICENSE" && names.Contains "README.md") (sprintf "%s has LICENSE and README.md" name)
            Expect.stringContains nuspec "<license type=\"expression\">Apache-2.0</license>" (sprintf "%s: Apache-2.0" name)
            Expect.stringContains nuspec "<readme>README.md</readme>" (sprintf "%s: the readme" name)
            // A dotnet tool (parsl, parsl-endpoint) is a program, not a library: it carries no API docs.
            if not (nuspec.Contains "<packageType name=\"DotnetTool\"") then
                Expect.isTrue (names |> Set.exists (fun n -> n.StartsWith "lib/" && n.EndsWith ".xml")) (sprintf "%s has XML docs" name)
            if name.StartsWith "Parsl.Workers." then
                Expect.isTrue (names.Contains "buildTransitive/Parsl.Workers.targets") "the worker's build targets"
                Expect.isTrue (names.Contains "lib/net10.0/Parsl.Workers.runtimeconfig.json") "the worker's runtimeconfig"
                // A compute node needs the node side only: the worker's package depends on Parsl.Node, not the kernel.
                Expect.stringContains nuspec "id=\"Parsl.Node\"" "the worker depends on Parsl.Node"
                Expect.isFalse (nuspec.Contains "id=\"Parsl.Core.FSharp\"") "the worker does not depend on the kernel"

/// The tests, sharing one sandbox (packed once).
let tests (sandbox: Lazy<Sandbox>) =
    testSequenced <| testList "New user" [
        contents sandbox; consoleApp sandbox; fsharpScript sandbox; fileBasedApp sandbox; mpiApp sandbox; taskVineApp sandbox
        withoutWorkers sandbox ]
