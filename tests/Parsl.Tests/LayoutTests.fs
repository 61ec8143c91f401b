/// Folders show the architecture. In every project under src/, a file's namespace is the project's root namespace
/// followed by its folder path (a top-level `module A.B.C` counts as namespace `A.B`), so the tree says where each
/// type lives; and the pure kernel's folder (Parsl.Core.FSharp's `Core/`) opens nothing that does IO or waits.
module Parsl.Tests.LayoutTests

open System
open System.IO
open System.Text.RegularExpressions
open System.Xml.Linq
open Expecto

/// Files whose namespace differs from their folder's on purpose, with the namespace they declare and why.
let private exceptions =
    // The .NET convention for `IServiceCollection` extensions: `services.AddParsl()` is found without a `using`.
    [ "src/Parsl.Hosting/ParslServiceCollectionExtensions.cs", "Microsoft.Extensions.DependencyInjection" ]
    |> Map.ofList

/// The namespace a file at `relPath` ('/'-separated, relative to its project's folder) must declare in a project
/// whose root namespace is `root`.
let expectedNamespace (root: string) (relPath: string) =
    let parts = relPath.Split '/'
    String.Join(".", Array.append [| root |] parts[.. parts.Length - 2])

let private fsNamespace = Regex(@"^namespace\s+(?:rec\s+)?(?:global\.)?([\w.]+)\s*$", RegexOptions.Multiline)

// A top-level module has no `=` (a nested `module X =` is a module inside the file's namespace).
let private fsTopModule =
    Regex(@"^module\s+(?:(?:public|internal|private)\s+)?(?:rec\s+)?([\w.]+)\s*$", RegexOptions.Multiline)

let private csNamespace = Regex(@"^\s*namespace\s+([\w.]+)\s*[;{]?\s*$", RegexOptions.Multiline)

/// The namespaces an F# file declares: each top-level `namespace X`, and `A.B` for a top-level `module A.B.C`
/// (`""` for a top-level module with no dot: the global namespace).
let fsharpNamespaces (text: string) : string list =
    let text = text.Replace("\r\n", "\n")
    let modules =
        [ for m in fsTopModule.Matches text ->
              let name = m.Groups[1].Value
              match name.LastIndexOf '.' with
              | -1 -> ""
              | i -> name.Substring(0, i) ]
    [ for m in fsNamespace.Matches text -> m.Groups[1].Value ] @ modules

/// The namespaces a C# file declares (file-scoped or block).
let csharpNamespaces (text: string) : string list =
    [ for m in csNamespace.Matches(text.Replace("\r\n", "\n")) -> m.Groups[1].Value ]

/// One file's breach of the rule, in words naming the file; None when the file follows its folder. `path` is the
/// file's repository path (for the message and the exceptions), `relPath` its path inside the project.
let violation (root: string) (path: string) (relPath: string) (declared: string list) : string option =
    let expected =
        match Map.tryFind path exceptions with
        | Some ns -> ns
        | None -> expectedNamespace root relPath
    match declared |> List.filter (fun ns -> ns <> expected) with
    | _ when List.isEmpty declared ->
        Some(sprintf "%s declares no namespace; expected `namespace %s` (its folder)" path expected)
    | [] -> None
    | wrong ->
        Some(
            sprintf "%s declares namespace %s; expected %s (root namespace %s + its folder): move the file to the folder of its namespace, or change its namespace"
                path (String.Join(", ", List.distinct wrong)) expected root)

/// The repository's root, above the tests' output folder.
let private repoRoot () = NodeAssemblyTests.repoRoot ()

/// A project: its file (repository path), root namespace, and compile items (paths inside the project's folder).
type private Project = { Path: string; RootNamespace: string; Items: string list }

/// Every project under src/ in the solution, with its compile items: the fsproj's `<Compile Include>` for F#, and
/// every .cs file outside bin/ and obj/ for C# (the SDK's default).
let private projects (root: string) =
    let slnx = XDocument.Load(Path.Combine(root, "Parsl.slnx"))
    [ for p in slnx.Descendants(XName.Get "Project") do
          let path = p.Attribute(XName.Get "Path").Value.Replace('\\', '/')
          if path.StartsWith "src/" then
              let full = Path.Combine(root, path)
              let dir = Path.GetDirectoryName full
              let doc = XDocument.Load full
              let rootNs =
                  match doc.Descendants(XName.Get "RootNamespace") |> Seq.tryHead with
                  | Some e -> e.Value.Trim()
                  | None -> Path.GetFileNameWithoutExtension full
              let items =
                  if path.EndsWith ".fsproj" then
                      [ for c in doc.Descendants(XName.Get "Compile") do
                            match c.Attribute(XName.Get "Include") with
                            | null -> ()
                            | a -> a.Value.Replace('\\', '/') ]
                  else
                      [ for f in Directory.EnumerateFiles(dir, "*.cs", SearchOption.AllDirectories) do
                            let rel = Path.GetRelativePath(dir, f).Replace('\\', '/')
                            if not (rel.StartsWith "bin/" || rel.StartsWith "obj/") then rel ]
              { Path = path; RootNamespace = rootNs; Items = items } ]

let private projectDir (p: Project) = p.Path.Substring(0, p.Path.LastIndexOf '/')

/// What the pure kernel may not touch: Parsl's runtime namespaces, and the BCL's and NetMQ's IO and threads.
let private forbiddenPrefixes = [ "System.IO"; "System.Threading"; "System.Net"; "NetMQ" ]

let private isForbidden (ns: string) =
    let segments = ns.Split '.'
    List.exists (fun (p: string) -> ns = p || ns.StartsWith(p + ".")) forbiddenPrefixes
    || (segments[0] = "Parsl" && Array.contains "Runtime" segments)

let private openLine = Regex(@"^\s*open\s+(?:type\s+)?([\w.]+)")
let private qualified = Regex(@"\b((?:System\.(?:IO|Threading|Net)|NetMQ|Parsl(?:\.\w+)*\.Runtime)\.\w+)")

/// What a pure file uses that it may not: each `open` of a forbidden namespace, and each qualified use of one
/// outside comments.
let impurities (text: string) : string list =
    [ for line in text.Replace("\r\n", "\n").Split '\n' do
          let code =
              match line.IndexOf "//" with
              | -1 -> line
              | i -> line.Substring(0, i)
          let o = openLine.Match code
          if o.Success then
              if isForbidden o.Groups[1].Value then yield sprintf "open %s" o.Groups[1].Value
          else
              for m in qualified.Matches code do
                  yield m.Groups[1].Value ]
    |> List.distinct

let tests =
    testList "Layout" [
        testList "the rule" [
            test "a file's namespace is the root namespace followed by its folders" {
                Expect.equal (expectedNamespace "Parsl" "Executors/Mpi/Prefix.fs") "Parsl.Executors.Mpi" "nested folders"
                Expect.equal (expectedNamespace "Parsl" "Futures.fs") "Parsl" "the project's root folder"
                Expect.equal (expectedNamespace "Parsl.Cli" "Program.fs") "Parsl.Cli" "another project's root"
            }
            test "declarations are read from namespaces and top-level modules, not nested modules" {
                Expect.equal (fsharpNamespaces "module Parsl.Cli.Program\n\nopen System\n\nmodule Args =\n    let x = 1\n")
                    [ "Parsl.Cli" ] "a top-level module counts as its namespace"
                Expect.equal (fsharpNamespaces "namespace Parsl\n\nmodule internal A =\n    ()\n\nnamespace Parsl.Runtime\n")
                    [ "Parsl"; "Parsl.Runtime" ] "every namespace of a file"
                Expect.equal (csharpNamespaces "using System;\n\nnamespace Parsl.Hosting;\n\npublic class K { }\n")
                    [ "Parsl.Hosting" ] "a file-scoped C# namespace"
            }
            test "a file in the wrong folder is named, with the namespace its folder asks for" {
                // Core/States.fs as it was before the move: `namespace Parsl` in the kernel's folder.
                match violation "Parsl" "src/Parsl.Core.FSharp/Core/States.fs" "Core/States.fs" [ "Parsl" ] with
                | Some msg ->
                    Expect.stringContains msg "src/Parsl.Core.FSharp/Core/States.fs" "names the file"
                    Expect.stringContains msg "expected Parsl.Core" "says what its folder asks for"
                | None -> failtest "a namespace that does not follow its folder passed"
                Expect.isSome (violation "Parsl" "src/X/A.fs" "Runtime/A.fs" [ "Parsl.Runtime"; "Parsl" ])
                    "one stray namespace in a file is enough"
                Expect.isSome (violation "Parsl" "src/X/A.fs" "A.fs" []) "a file with no namespace"
                Expect.isNone (violation "Parsl" "src/X/A.fs" "Executors/A.fs" [ "Parsl.Executors" ]) "a file that follows"
            }
            test "IO, threads and the runtime are impure, whether opened or named" {
                Expect.equal (impurities "namespace Parsl.Core\n\nopen System\nopen System.IO\nopen Parsl\n") [ "open System.IO" ] "an open"
                Expect.equal (impurities "let f () = System.Threading.Thread.Sleep 1\n") [ "System.Threading.Thread" ] "a qualified use"
                Expect.equal (impurities "open Parsl.Node.Runtime\n") [ "open Parsl.Node.Runtime" ] "Parsl's runtime"
                Expect.isEmpty (impurities "open System.Collections.Generic\n// no System.IO here\nlet x = 1\n") "comments and pure namespaces"
            }
        ]

        test "every source file's namespace follows its folder, in every project under src/" {
            let root = repoRoot ()
            let all = projects root
            Expect.isGreaterThanOrEqual (List.length all) 8 "the solution's src/ projects are found"
            let breaches =
                [ for p in all do
                      Expect.isNonEmpty p.Items (sprintf "%s has compile items" p.Path)
                      for rel in p.Items do
                          let path = projectDir p + "/" + rel
                          let text = File.ReadAllText(Path.Combine(root, path))
                          let declared = if rel.EndsWith ".cs" then csharpNamespaces text else fsharpNamespaces text
                          match violation p.RootNamespace path rel declared with
                          | Some v -> v
                          | None -> () ]
            Expect.isEmpty breaches (String.Join("\n", breaches))
        }

        test "the pure kernel (Core/) opens nothing from the runtime, IO or threads" {
            let root = repoRoot ()
            let core = projects root |> List.find (fun p -> p.Path = "src/Parsl.Core.FSharp/Parsl.Core.FSharp.fsproj")
            let kernelFiles = core.Items |> List.filter (fun rel -> rel.StartsWith "Core/")
            Expect.contains kernelFiles "Core/Kernel.fs" "the kernel is in Core/"
            let breaches =
                [ for rel in kernelFiles do
                      for i in impurities (File.ReadAllText(Path.Combine(root, projectDir core, rel))) ->
                          sprintf "%s/%s uses %s" (projectDir core) rel i ]
            Expect.isEmpty breaches (String.Join("\n", breaches))
        }
    ]
