/// The node side is its own assembly: the executable started on compute nodes (Parsl.Workers) links Parsl.Node only,
/// and a manager and its workers never load the kernel (Parsl.Core.FSharp), even from a folder that holds it.
module Parsl.Tests.NodeAssemblyTests

open System
open System.IO
open System.Reflection.Metadata
open System.Reflection.PortableExecutable
open Expecto
open Parsl
open Parsl.Executors.HighThroughput
open Parsl.Tests.TestUtil

/// What a worker process sees of itself and of its parent (the manager). No module-level values in this file: the
/// probe runs on a worker, and must not pull anything of the tests' own beyond its code.
type NodeProbe =
    { WorkerAssemblies: string list
      WorkerMaps: string
      ManagerCommandLine: string
      ManagerMaps: string }

/// Runs on a worker: its loaded assemblies, and the files mapped into it and into its manager.
let probe (_: int) : NodeProbe =
    // /proc/self/stat: "pid (comm) state ppid ..."; comm may hold spaces, so read after the last ')'.
    let stat = File.ReadAllText "/proc/self/stat"
    let ppid = stat.Substring(stat.LastIndexOf ')' + 2).Split(' ')[1]
    { WorkerAssemblies = [ for a in AppDomain.CurrentDomain.GetAssemblies() -> a.GetName().Name ]
      WorkerMaps = File.ReadAllText "/proc/self/maps"
      ManagerCommandLine = File.ReadAllText(sprintf "/proc/%s/cmdline" ppid).Replace('\000', ' ')
      ManagerMaps = File.ReadAllText(sprintf "/proc/%s/maps" ppid) }

/// The assemblies an assembly file references, read from its metadata (nothing is loaded).
let private referencesOf (path: string) =
    use pe = new PEReader(File.OpenRead path)
    let md = pe.GetMetadataReader()
    [ for h in md.AssemblyReferences -> md.GetString(md.GetAssemblyReference(h).Name) ]

/// The repository's root, above the tests' output folder.
let repoRoot () =
    let rec up (d: DirectoryInfo) =
        if isNull d then failtest "no Parsl.slnx above the tests' folder"
        elif File.Exists(Path.Combine(d.FullName, "Parsl.slnx")) then d.FullName
        else up d.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

let tests =
    testList "Node assembly" [
        test "Parsl.Workers and Parsl.Node reference no kernel assembly" {
            let here = AppContext.BaseDirectory
            let workers = referencesOf (Path.Combine(here, "Parsl.Workers.dll"))
            Expect.contains workers "Parsl.Node" "the worker executable links the node side"
            Expect.isFalse (List.contains "Parsl.Core.FSharp" workers) (sprintf "Parsl.Workers references %A" workers)
            let node = referencesOf (Path.Combine(here, "Parsl.Node.dll"))
            Expect.isFalse (List.exists (fun (n: string) -> n.StartsWith "Parsl.") node) (sprintf "Parsl.Node references %A" node)
        }
        test "the worker's own build output holds no Parsl.Core.FSharp.dll and its deps file names none" {
            // The tests' folder is <root>/tests/Parsl.Tests/bin/<configuration>/<framework>/; the worker's is beside.
            let here = DirectoryInfo AppContext.BaseDirectory
            let framework, configuration = here.Name, here.Parent.Name
            let out = Path.Combine(repoRoot (), "src", "Parsl.Workers", "bin", configuration, framework)
            Expect.isTrue (File.Exists(Path.Combine(out, "Parsl.Workers.dll"))) (sprintf "the worker is built in %s" out)
            Expect.isTrue (File.Exists(Path.Combine(out, "Parsl.Node.dll"))) "the node side is beside it"
            Expect.isFalse (File.Exists(Path.Combine(out, "Parsl.Core.FSharp.dll"))) "no kernel beside the worker"
            let deps = File.ReadAllText(Path.Combine(out, "Parsl.Workers.deps.json"))
            Expect.isFalse (deps.Contains "Parsl.Core.FSharp") "the deps file names no kernel"
        }
        test "a manager and its worker never load Parsl.Core.FSharp, though it sits beside them" {
            // The tests' folder holds Parsl.Core.FSharp.dll next to Parsl.Workers.dll, as an application's does.
            Expect.isTrue (File.Exists(Path.Combine(AppContext.BaseDirectory, "Parsl.Core.FSharp.dll"))) "the kernel is beside the worker"
            let _, dfk = HtexTests.withHtex (fun o -> { o with MaxWorkersPerNode = Some 1 })
            use _ = dfk
            // A shell app first, so the worker has run Parsl.Node's shell code too; then the probe, on the same worker.
            let echo = App.shell dfk (fun (x: int) -> sprintf "exit %d" x)
            Expect.equal (await (echo (Arg.value 0)).Task) 0 "the shell app ran"
            let look = App.func dfk probe
            let p = await (look (Arg.value 0)).Task
            Expect.stringContains p.ManagerCommandLine "--manager" "the worker's parent is its manager"
            Expect.contains p.WorkerAssemblies "Parsl.Node" "the worker runs Parsl.Node"
            Expect.isFalse (List.contains "Parsl.Core.FSharp" p.WorkerAssemblies) (sprintf "worker assemblies: %A" p.WorkerAssemblies)
            Expect.isFalse (p.WorkerMaps.Contains "Parsl.Core.FSharp.dll") "the kernel is not mapped into the worker"
            Expect.stringContains p.ManagerMaps "Parsl.Node.dll" "the manager maps Parsl.Node"
            Expect.isFalse (p.ManagerMaps.Contains "Parsl.Core.FSharp.dll") "the kernel is not mapped into the manager"
        }
    ]
