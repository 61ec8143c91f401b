// The build script: `dotnet fsi build.fsx -t <Target>` with Generated, Build, Test, Bench, Example, Pack.
// Test runs every test project under tests/ (Expecto projects with `dotnet run`, xunit projects with
// `dotnet test`), and ends by printing one line: `N passed, N failed`, also written to artifacts/test-summary.txt.
#r "nuget: Fake.Core.Target, 5.20.3"
#r "nuget: Fake.Core.Process, 5.20.3"
#r "nuget: Fake.IO.FileSystem, 5.20.3"

open System
open System.IO
open System.Text.RegularExpressions
open Fake.Core
open Fake.IO

let args = fsi.CommandLineArgs |> Array.skip 1 |> List.ofArray
Context.setExecutionContext (Context.RuntimeContext.Fake(Context.FakeExecutionContext.Create false "build.fsx" args))

let root = __SOURCE_DIRECTORY__
let configuration = Environment.environVarOrDefault "CONFIGURATION" "Release"
let artifacts = Path.Combine(root, "artifacts")

Environment.setEnvironVar "DOTNET_CLI_TELEMETRY_OPTOUT" "1"
Environment.setEnvironVar "DOTNET_NOLOGO" "1"
Environment.setEnvironVar "DOTNET_SKIP_FIRST_TIME_EXPERIENCE" "1"

/// Runs dotnet with arguments; returns the exit code, echoing output, and the output itself.
let dotnet (arguments: string list) =
    let output = Text.StringBuilder()
    let psi = Diagnostics.ProcessStartInfo("dotnet")
    for a in arguments do psi.ArgumentList.Add a
    psi.WorkingDirectory <- root
    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    use p = new Diagnostics.Process(StartInfo = psi)
    let lockObj = obj ()
    let onLine (e: Diagnostics.DataReceivedEventArgs) =
        if not (isNull e.Data) then
            lock lockObj (fun () ->
                Console.WriteLine e.Data
                output.AppendLine e.Data |> ignore)
    p.OutputDataReceived.Add onLine
    p.ErrorDataReceived.Add onLine
    p.Start() |> ignore
    p.BeginOutputReadLine()
    p.BeginErrorReadLine()
    p.WaitForExit()
    p.ExitCode, output.ToString()

let run arguments =
    let code, _ = dotnet arguments
    if code <> 0 then failwithf "dotnet %s failed with exit code %d" (String.Join(" ", (arguments: string list))) code

let testProjects () =
    Directory.GetDirectories(Path.Combine(root, "tests"))
    |> Array.sort
    |> Array.collect (fun d -> Array.append (Directory.GetFiles(d, "*.fsproj")) (Directory.GetFiles(d, "*.csproj")))

let shippedProjects () =
    Directory.GetDirectories(Path.Combine(root, "src"))
    |> Array.sort
    |> Array.collect (fun d -> Array.append (Directory.GetFiles(d, "*.fsproj")) (Directory.GetFiles(d, "*.csproj")))

let isXunit (proj: string) = File.ReadAllText(proj).Contains "Microsoft.NET.Test.Sdk"

let stripAnsi (s: string) = Regex.Replace(s, @"\x1B\[[0-9;?]*[A-Za-z]", "")

/// The C# façade's generated files (`App.Arities.g.cs`, `Dfk.Apps.g.cs`) are regenerated into a scratch folder by
/// their generator and compared with the committed ones: a hand edit of a generated file, or a pattern change that
/// was not regenerated, stops the build (the C# test GeneratedFilesTests checks the same on every test run).
let checkGenerated () =
    let generator = Path.Combine("src", "Parsl.CSharp", "Arities.fsx")
    let scratch = Directory.CreateTempSubdirectory("parsl-arities-").FullName
    try
        run [ "fsi"; generator; scratch ]
        let stale =
            [ for f in Directory.GetFiles scratch |> Array.sort do
                  let committed = Path.Combine(root, "src", "Parsl.CSharp", Path.GetFileName f)
                  let text (p: string) = File.ReadAllText(p).ReplaceLineEndings "\n"
                  if not (File.Exists committed) || text committed <> text f then
                      yield Path.GetRelativePath(root, committed) ]
        if not stale.IsEmpty then
            failwithf
                "%s differ from what %s writes: edit the pattern there, not the file, then run `dotnet fsi %s` and commit the result"
                (String.Join(", ", stale)) generator generator
    finally
        Directory.Delete(scratch, true)

Target.create "Generated" (fun _ -> checkGenerated ())

Target.create "Build" (fun _ -> run [ "build"; "Parsl.slnx"; "-c"; configuration ])

Target.create "Test" (fun _ ->
    Directory.CreateDirectory artifacts |> ignore
    let mutable passed = 0
    let mutable failed = 0
    let mutable broken = []
    for proj in testProjects () do
        let name = Path.GetFileNameWithoutExtension proj
        Trace.log (sprintf "==> %s" name)
        if isXunit proj then
            let trx = Path.Combine(artifacts, name + ".trx")
            if File.Exists trx then File.Delete trx
            let code, _ =
                dotnet [ "test"; proj; "-c"; configuration; "--no-build"; "--logger"; sprintf "trx;LogFileName=%s" trx ]
            if File.Exists trx then
                let text = File.ReadAllText trx
                let num attr =
                    let m = Regex.Match(text, sprintf "<Counters [^>]*\\b%s=\"(\\d+)\"" attr)
                    if m.Success then int m.Groups[1].Value else 0
                passed <- passed + num "passed"
                failed <- failed + num "failed" + num "error" + num "timeout" + num "aborted"
                if code <> 0 && num "failed" = 0 then broken <- name :: broken
            else
                broken <- name :: broken
        else
            let code, out = dotnet [ "run"; "--project"; proj; "-c"; configuration; "--no-build"; "--"; "--no-spinner" ]
            let m =
                Regex.Matches(stripAnsi out, @"(\d+) passed, (\d+) ignored, (\d+) failed, (\d+) errored")
                |> Seq.tryLast
            match m with
            | Some m ->
                passed <- passed + int m.Groups[1].Value
                failed <- failed + int m.Groups[3].Value + int m.Groups[4].Value
                if code <> 0 && int m.Groups[3].Value + int m.Groups[4].Value = 0 then broken <- name :: broken
            | None -> broken <- name :: broken
    // A runner that crashed before reporting counts as one failure, so it can never look green.
    failed <- failed + List.length broken
    let summary = sprintf "%d passed, %d failed" passed failed
    File.WriteAllText(Path.Combine(artifacts, "test-summary.txt"), summary + "\n")
    if not broken.IsEmpty then Trace.traceError (sprintf "Test runners that did not report: %s" (String.Join(", ", broken)))
    printfn "%s" summary
    if failed > 0 then failwith summary)

// Published as an application is deployed (ReadyToRun, see bench/Parsl.Bench.fsproj), then run. Arguments after
// `--` choose figures: `dotnet fsi build.fsx -t Bench -- htex`.
Target.create "Bench" (fun p ->
    let published = Path.Combine(artifacts, "bench")
    run [ "publish"; "bench/Parsl.Bench"; "-c"; "Release"; "-o"; published ]
    run ([ Path.Combine(published, "Parsl.Bench.dll") ] @ p.Context.Arguments))

// Every package a user needs (the projects under src/), with its .snupkg symbols, into artifacts/packages. One
// version for all, from Directory.Build.props; `-- --version-suffix preview.1` adds a prerelease suffix.
Target.create "Pack" (fun p ->
    let packages = Path.Combine(artifacts, "packages")
    Shell.cleanDir packages
    // The shipped projects only (the solution would build the tests too).
    for proj in shippedProjects () do
        run ([ "pack"; proj; "-c"; configuration; "-o"; packages; "-p:ContinuousIntegrationBuild=true" ] @ p.Context.Arguments)
    for f in Directory.GetFiles(packages) |> Array.sort do
        Trace.log (sprintf "%s  %d KiB" (Path.GetFileName f) ((FileInfo f).Length / 1024L)))

Target.create "Example" (fun _ ->
    run [ "run"; "--project"; "examples/Quickstart"; "-c"; configuration ])

Target.create "Default" ignore

open Fake.Core.TargetOperators
"Generated" ==> "Build" |> ignore
"Build" ==> "Test" |> ignore
"Build" ==> "Example" |> ignore
"Build" ==> "Default" |> ignore

Target.runOrDefaultWithArguments "Default"
