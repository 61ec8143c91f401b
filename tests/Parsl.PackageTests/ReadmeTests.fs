/// Every ```csharp and ```fsharp block of README.md is compiled against the packages (and the C# ones marked
/// `run` are run), so the README cannot drift from the API.
///
/// Markers, in an HTML comment on the line before a block (invisible when the README is rendered):
/// - `<!-- snippet: run -->`: a C# block that is a whole program, run after it compiles (it must exit with 0).
/// - `<!-- snippet: prelude` then lines of code, then `-->`: the lines are put before the block when it is compiled,
///   for a block that continues an earlier one (it uses its `dfk`, say). Write preludes with qualified names
///   (`Parsl.DataFlowKernel.Load ...`), so the block's own `open`s are still checked.
/// Every C# block is its own console program; every F# block is one file (a module) of one library.
module Parsl.PackageTests.ReadmeTests

open System
open System.IO
open System.Text.RegularExpressions
open Expecto
open Parsl.PackageTests.Sandbox

/// A code block of the README.
type Block =
    { Language: string
      /// The README line of the opening fence (1-based), to name the block in errors.
      Line: int
      Code: string
      Prelude: string
      Run: bool }

/// The C# and F# blocks of a Markdown text, with their markers. Pure: tested on its own below.
let extract (markdown: string) : Block list =
    let lines = markdown.Replace("\r\n", "\n").Split('\n')
    let fence = Regex(@"^(\s*)```(\w*)\s*$")
    let rec go i (marker: string list) acc =
        if i >= lines.Length then List.rev acc
        else
            let m = fence.Match lines[i]
            if m.Success && m.Groups[2].Value <> "" then
                let indent = m.Groups[1].Value.Length
                let close = Seq.tryFind (fun j -> Regex.IsMatch(lines[j], @"^\s*```\s*$")) (seq { i + 1 .. lines.Length - 1 })
                let last = defaultArg close lines.Length
                let body =
                    [ for j in i + 1 .. last - 1 ->
                          let l = lines[j]
                          if l.Length >= indent && String.IsNullOrWhiteSpace(l.Substring(0, indent)) then l.Substring indent else l.TrimStart() ]
                let lang = m.Groups[2].Value
                let acc =
                    if lang = "csharp" || lang = "fsharp" then
                        { Language = lang
                          Line = i + 1
                          Code = String.Join("\n", body)
                          Prelude = (match marker with "prelude" :: rest -> String.Join("\n", rest) | _ -> "")
                          Run = (marker = [ "run" ]) } :: acc
                    else acc
                go (last + 1) [] acc
            elif lines[i].Trim().StartsWith "<!-- snippet:" then
                // The marker: one line (`<!-- snippet: run -->`) or a prelude running to `-->`.
                let head = lines[i].Trim().Substring("<!-- snippet:".Length).Trim()
                if head.EndsWith "-->" then go (i + 1) [ head.Substring(0, head.Length - 3).Trim() ] acc
                else
                    let close = Seq.find (fun j -> lines[j].Trim() = "-->") (seq { i + 1 .. lines.Length - 1 })
                    go (close + 1) (head :: [ for j in i + 1 .. close - 1 -> lines[j] ]) acc
            elif String.IsNullOrWhiteSpace lines[i] then go (i + 1) marker acc
            else go (i + 1) [] acc
    go 0 [] []

let private csproj (version: string) =
    sprintf """<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <ImplicitUsings>enable</ImplicitUsings>
    <Nullable>enable</Nullable>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Parsl.CSharp" Version="%s" />
    <PackageReference Include="Parsl.Workers" Version="%s" />
    <PackageReference Include="Parsl.Hosting" Version="%s" />
    <PackageReference Include="Microsoft.Extensions.Hosting" Version="11.0.0" />
  </ItemGroup>
</Project>
"""
        version version version

let private fsproj (version: string) (files: string list) =
    sprintf """<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <TargetFramework>net10.0</TargetFramework>
    <!-- FS0524: a snippet's top-level `use` is a `let` in a module; FS0020: a snippet may drop a value. -->
    <NoWarn>$(NoWarn);FS0524;FS0020;FS0988</NoWarn>
  </PropertyGroup>
  <ItemGroup>
%s
  </ItemGroup>
  <ItemGroup>
    <PackageReference Include="Parsl.Core.FSharp" Version="%s" />
  </ItemGroup>
</Project>
"""
        (files |> List.map (sprintf "    <Compile Include=\"%s\" />") |> String.concat "\n") version

/// The README's blocks as projects: cs-L<line>/ for each C# block, fsharp/ with Snippet_L<line>.fs for the F# ones.
let private write (dir: string) (version: string) (blocks: Block list) =
    let cs = blocks |> List.filter (fun b -> b.Language = "csharp")
    let fs = blocks |> List.filter (fun b -> b.Language = "fsharp")
    let projects =
        [ for b in cs do
              let d = Path.Combine(dir, sprintf "cs-L%d" b.Line)
              Directory.CreateDirectory d |> ignore
              File.WriteAllText(Path.Combine(d, sprintf "cs-L%d.csproj" b.Line), csproj version)
              File.WriteAllText(Path.Combine(d, "Program.cs"), (if b.Prelude = "" then "" else b.Prelude + "\n") + b.Code + "\n")
              Path.Combine(d, sprintf "cs-L%d.csproj" b.Line)
          if not fs.IsEmpty then
              let d = Path.Combine(dir, "fsharp")
              Directory.CreateDirectory d |> ignore
              let files =
                  [ for b in fs ->
                        let name = sprintf "Snippet_L%d.fs" b.Line
                        File.WriteAllText(
                            Path.Combine(d, name),
                            sprintf "module Readme.Snippet_L%d\n\n%s%s\n" b.Line (if b.Prelude = "" then "" else b.Prelude + "\n") b.Code)
                        name ]
              File.WriteAllText(Path.Combine(d, "Readme.FSharp.fsproj"), fsproj version files)
              Path.Combine(d, "Readme.FSharp.fsproj") ]
    let slnx =
        "<Solution>\n" + (projects |> List.map (fun p -> sprintf "  <Project Path=\"%s\" />\n" (Path.GetRelativePath(dir, p))) |> String.concat "") + "</Solution>\n"
    File.WriteAllText(Path.Combine(dir, "readme.slnx"), slnx)
    cs

let private readme () = File.ReadAllText(Path.Combine(repoRoot (), "README.md"))

/// The blocks of the README compile against the packages; those marked `run` run.
let private compileAndRun (sandbox: Lazy<Sandbox>) =
    testCase "every C# and F# block of README.md compiles against the packages, and the ones marked run run" <| fun () ->
        let s = sandbox.Value
        let blocks = extract (readme ())
        Expect.isGreaterThan (blocks |> List.filter (fun b -> b.Language = "csharp") |> List.length) 2 "the README has C# blocks"
        Expect.isGreaterThan (blocks |> List.filter (fun b -> b.Language = "fsharp") |> List.length) 5 "the README has F# blocks"
        let dir = folder s "readme"
        let cs = write dir s.Version blocks
        let built = dotnet s dir (TimeSpan.FromMinutes 10.0) [ "build"; "readme.slnx"; "-c"; "Release" ]
        if built.ExitCode <> 0 then
            let errors =
                built.Output.Split('\n')
                |> Array.filter (fun l -> l.Contains ": error ")
                |> Array.map (fun l -> l.Trim())
                |> Array.distinct
            failtestf "README blocks do not compile (cs-L<n>/Program.cs and Snippet_L<n>.fs name the README line of the block):\n%s"
                (String.Join("\n", errors))
        for b in cs |> List.filter (fun b -> b.Run) do
            let d = Path.Combine(dir, sprintf "cs-L%d" b.Line)
            let dll = Path.Combine(d, "bin", "Release", "net10.0", sprintf "cs-L%d.dll" b.Line)
            let ran = dotnet s d (TimeSpan.FromMinutes 3.0) [ dll ]
            if ran.ExitCode <> 0 then failtestf "the README's C# block at line %d exited with %d:\n%s" b.Line ran.ExitCode ran.Output

/// The extraction itself, on a made-up README.
let private extraction =
    testList "extraction" [
        testCase "finds C# and F# blocks, indented ones included, with their markers, and skips other languages" <| fun () ->
            let md =
                String.concat "\n" [
                    "# T"; "```bash"; "dotnet run"; "```"; "<!-- snippet: run -->"; "```csharp"; "Console.WriteLine(1);"; "```"
                    "- item"; ""; "  ```fsharp"; "  let x ="; "      1"; "  ```"
                    "<!-- snippet: prelude"; "let dfk = 1"; "-->"; "```fsharp"; "dfk + 1"; "```"
                    "<!-- snippet: run -->"; "text between"; "```csharp"; "return;"; "```" ]
            let blocks = extract md
            Expect.equal (blocks |> List.map (fun b -> b.Language, b.Line, b.Code, b.Prelude, b.Run)) [
                "csharp", 6, "Console.WriteLine(1);", "", true
                "fsharp", 11, "let x =\n    1", "", false
                "fsharp", 18, "dfk + 1", "let dfk = 1", false
                "csharp", 23, "return;", "", false ] "the blocks"
    ]

let tests (sandbox: Lazy<Sandbox>) = testList "README" [ extraction; compileAndRun sandbox ]
