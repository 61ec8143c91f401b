/// A new user's machine, as far as Parsl.NET is concerned: a temporary folder outside the repository with a folder
/// feed holding the packages packed from this repository, a nuget.config that adds that feed to the user's own
/// sources (so third-party packages come from wherever the user gets them), and a NuGet packages folder of its own,
/// so nothing restored earlier (an older build of the same version) can stand in for what was just packed.
module Parsl.PackageTests.Sandbox

open System
open System.Diagnostics
open System.IO
open System.Text

/// The repository's root (where Parsl.slnx is), found from this test's build output.
let repoRoot () =
    let rec up (d: DirectoryInfo) =
        if isNull d then failwith "Parsl.slnx not found above the test's directory"
        elif File.Exists(Path.Combine(d.FullName, "Parsl.slnx")) then d.FullName
        else up d.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

/// What a process printed (stdout and stderr interleaved) and how it ended.
type Outcome = { ExitCode: int; Output: string }

/// A sandbox: the folder, the feed and the version the packages were packed with.
type Sandbox =
    { Root: string
      Feed: string
      Packages: string
      Version: string }

/// The environment of every process the new user starts: ours, minus what `dotnet run`/`dotnet test` set for
/// themselves (MSBuild's variables would make a child `dotnet build` use this build's settings), plus the sandbox's
/// packages folder.
let private environment (packages: string option) (psi: ProcessStartInfo) =
    for k in List.ofSeq psi.Environment.Keys do
        if k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) || k = "DOTNET_HOST_PATH" || k.StartsWith "VSTEST" then
            psi.Environment.Remove k |> ignore
    packages |> Option.iter (fun p -> psi.Environment["NUGET_PACKAGES"] <- p)
    psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] <- "1"
    psi.Environment["DOTNET_NOLOGO"] <- "1"
    psi.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] <- "1"

/// Runs a program to its end, or kills its whole tree after `timeout` and says so. `packages`: the NuGet packages
/// folder (None: the user's own).
let runIn (packages: string option) (dir: string) (timeout: TimeSpan) (program: string) (args: string list) =
    let psi = ProcessStartInfo(program, WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true)
    for a in args do psi.ArgumentList.Add a
    environment packages psi
    let output = StringBuilder()
    use p = new Process(StartInfo = psi)
    let gate = obj ()
    let onLine (e: DataReceivedEventArgs) = if not (isNull e.Data) then lock gate (fun () -> output.AppendLine e.Data |> ignore)
    p.OutputDataReceived.Add onLine
    p.ErrorDataReceived.Add onLine
    p.Start() |> ignore
    p.BeginOutputReadLine()
    p.BeginErrorReadLine()
    if not (p.WaitForExit timeout) then
        try p.Kill true with _ -> ()
        p.WaitForExit()
        failwithf "%s %s did not finish within %O; it printed:\n%s" program (String.Join(" ", args)) timeout (lock gate (fun () -> string output))
    p.WaitForExit() // the output's end
    { ExitCode = p.ExitCode; Output = lock gate (fun () -> string output) }

/// Runs `dotnet` in the sandbox.
let dotnet (s: Sandbox) (dir: string) (timeout: TimeSpan) (args: string list) = runIn (Some s.Packages) dir timeout "dotnet" args

/// Fails with the output when a command did not succeed.
let check (what: string) (o: Outcome) =
    if o.ExitCode <> 0 then failwithf "%s failed with exit code %d:\n%s" what o.ExitCode o.Output
    o

/// The version in Directory.Build.props, the one place it is set.
let private version (root: string) =
    let text = File.ReadAllText(Path.Combine(root, "Directory.Build.props"))
    let m = RegularExpressions.Regex.Match(text, "<Version>([^<]+)</Version>")
    if not m.Success then failwith "no <Version> in Directory.Build.props"
    m.Groups[1].Value

/// Packs every project under src/ into a new sandbox's feed (once per test run: the caller keeps the result).
let create () =
    let repo = repoRoot ()
    let root = Path.Combine(Path.GetTempPath(), "parsl-newuser-" + Guid.NewGuid().ToString("N").Substring(0, 12))
    let feed = Path.Combine(root, "feed")
    let packages = Path.Combine(root, "packages")
    Directory.CreateDirectory feed |> ignore
    // The feed is added to the user's sources; no <clear/>, so the user's own configuration still serves the rest.
    File.WriteAllText(
        Path.Combine(root, "nuget.config"),
        sprintf "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<configuration>\n  <packageSources>\n    <add key=\"parsl-local\" value=\"%s\" />\n  </packageSources>\n</configuration>\n" feed)
    let configuration = Environment.GetEnvironmentVariable "CONFIGURATION" |> Option.ofObj |> Option.defaultValue "Release"
    let projects =
        Directory.GetDirectories(Path.Combine(repo, "src"))
        |> Array.sort
        |> Array.collect (fun d -> Array.append (Directory.GetFiles(d, "*.fsproj")) (Directory.GetFiles(d, "*.csproj")))
    for p in projects do
        // Packed with the repository's own restore (its packages folder), as `dotnet fsi build.fsx -t Pack` does.
        runIn None repo (TimeSpan.FromMinutes 10.0) "dotnet" [ "pack"; p; "-c"; configuration; "-o"; feed; "--nologo" ]
        |> check (sprintf "dotnet pack %s" (Path.GetFileName p))
        |> ignore
    { Root = root; Feed = feed; Packages = packages; Version = version repo }

/// Removes the sandbox (its processes have all ended by then), and the worker folders made for its scripts (links
/// into its packages folder, under the user's data folder).
let delete (s: Sandbox) =
    let workers =
        Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.LocalApplicationData, "parsl-net", "workers")
    if Directory.Exists workers then
        for d in Directory.GetDirectories workers do
            let core = FileInfo(Path.Combine(d, "Parsl.Node.dll"))
            if not (isNull core.LinkTarget) && core.LinkTarget.StartsWith s.Root then
                try Directory.Delete(d, true) with _ -> ()
    try Directory.Delete(s.Root, true) with _ -> ()

/// A new folder in the sandbox.
let folder (s: Sandbox) (name: string) =
    let d = Path.Combine(s.Root, name)
    Directory.CreateDirectory d |> ignore
    d
