namespace Parsl.Executors.HighThroughput

open System
open System.IO
open System.Reflection
open System.Reflection.Metadata
open System.Reflection.PortableExecutable
open System.Security.Cryptography
open System.Text
open Parsl.Node.HighThroughput

/// A type of this assembly, to find where it was loaded from.
type internal WorkerDllMarker = class end

/// Where the default `WorkerCommand` finds the worker executable, `Parsl.Workers`.
///
/// An application (a console app, a C# file-based app, a published folder) has `Parsl.Workers.dll` beside it with
/// its runtimeconfig: the Parsl.Workers package's build targets copy it there, so the worker starts as
/// `dotnet <app dir>/Parsl.Workers.dll` and finds every assembly it needs in the application's folder.
///
/// A script run by `dotnet fsi` with `#r "nuget: Parsl.Workers"` has no folder of its own: each assembly stays in
/// its package's folder in the NuGet packages folder, where a worker started alone cannot find its dependencies
/// (it failed with "Could not load file or assembly FSharp.Core"). There the worker gets a folder of its own in
/// the user's data folder (`~/.local/share/parsl-net/workers/<hash>`), private to the user: links to `Parsl.Workers.dll`, its runtimeconfig and every assembly it
/// references, each where the client process itself loads it from.
[<RequireQualifiedAccess>]
module WorkerLocator =
    /// The worker assembly's file name.
    [<Literal>]
    let WorkerDll = "Parsl.Workers.dll"

    let private runtimeConfigOf (dll: string) = Path.ChangeExtension(dll, ".runtimeconfig.json")

    /// The Parsl.Workers package of the same version beside the loaded Parsl.Core.FSharp package, when this assembly
    /// was loaded from a NuGet packages folder (`<root>/parsl.core.fsharp/<version>/lib/<tfm>/Parsl.Core.FSharp.dll`).
    let private packageWorker () =
        let core = typeof<WorkerDllMarker>.Assembly.Location
        if String.IsNullOrEmpty core then None
        else
            let lib = Path.GetDirectoryName core                       // .../lib/net10.0
            let tfm = Path.GetFileName lib
            let versionDir = Path.GetDirectoryName(Path.GetDirectoryName lib)   // .../parsl.core.fsharp/<version>
            let packageDir = Path.GetDirectoryName versionDir
            if isNull packageDir || not (String.Equals(Path.GetFileName packageDir, "parsl.core.fsharp", StringComparison.OrdinalIgnoreCase)) then None
            else
                let root = Path.GetDirectoryName packageDir
                let dll = Path.Combine(root, "parsl.workers", Path.GetFileName versionDir, "lib", tfm, WorkerDll)
                if File.Exists dll && File.Exists(runtimeConfigOf dll) then Some dll else None

    let private referencesOf (path: string) =
        use stream = File.OpenRead path
        use pe = new PEReader(stream)
        let md = pe.GetMetadataReader()
        [ for h in md.AssemblyReferences -> md.GetAssemblyReference(h).GetAssemblyName() ]

    /// A package's copy of an assembly at least as new as the reference asks for, in the NuGet packages folder
    /// (`<root>/<name>/<version>/lib/<tfm>/<name>.dll`): `dotnet fsi` runs with its own FSharp.Core, older than
    /// the one Parsl.Workers was built against, which the worker's runtime would refuse.
    let private inPackages (root: string) (name: AssemblyName) =
        let dir = Path.Combine(root, name.Name.ToLowerInvariant())
        if not (Directory.Exists dir) then None
        else
            Directory.GetFiles(dir, name.Name + ".dll", SearchOption.AllDirectories)
            |> Array.filter (fun f -> Path.GetFileName(Path.GetDirectoryName(Path.GetDirectoryName f)) = "lib")
            |> Array.choose (fun f -> try Some(AssemblyName.GetAssemblyName(f).Version, f) with _ -> None)
            |> Array.filter (fun (v, _) -> isNull name.Version || v >= name.Version)
            |> Array.sortBy fst
            |> Array.tryHead
            |> Option.map snd

    /// Where the worker finds an assembly: where this process loaded it from when that copy is new enough, else a
    /// package's copy. None for the shared framework's own assemblies (the worker's runtime has them) and for what
    /// cannot be found (a reference the worker never follows).
    let private locate (frameworkDir: string) (root: string) (name: AssemblyName) =
        if File.Exists(Path.Combine(frameworkDir, name.Name + ".dll")) then None
        else
            let usable (a: Assembly) =
                not a.IsDynamic && not (String.IsNullOrEmpty a.Location)
                && (isNull name.Version || a.GetName().Version >= name.Version)
            let loaded =
                AppDomain.CurrentDomain.GetAssemblies()
                |> Array.tryFind (fun a -> a.GetName().Name = name.Name && usable a)
                |> Option.orElseWith (fun () ->
                    try Some(Assembly.Load(AssemblyName name.Name)) |> Option.filter usable with _ -> None)
            match loaded with
            | Some a -> Some a.Location
            | None -> inPackages root name

    /// The worker and every non-framework assembly it references, transitively: (simple name, path), sorted.
    let private closure (workerDll: string) =
        let frameworkDir = Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory()
        // <root>/parsl.workers/<version>/lib/<tfm>/Parsl.Workers.dll
        let root = Path.GetFullPath(Path.Combine(Path.GetDirectoryName workerDll, "..", "..", "..", ".."))
        let newer (n: AssemblyName) (found: Map<string, Version * string>) =
            match found.TryFind n.Name with
            | None -> true
            | Some(v, _) -> not (isNull n.Version) && n.Version > v
        // A name asked for again with a higher version (FSharp.Core: a library built long ago asks for an old one, Parsl for the newest)
        // is located again, so the copy that ends up in the folder satisfies every reference.
        let rec walk (pending: string list) (found: Map<string, Version * string>) =
            match pending with
            | [] -> found
            | path :: rest ->
                let next =
                    referencesOf path
                    |> List.filter (fun n -> newer n found)
                    |> List.groupBy (fun n -> n.Name)
                    |> List.map (fun (_, ns) -> ns |> List.maxBy (fun n -> if isNull n.Version then Version() else n.Version))
                    |> List.choose (fun n ->
                        locate frameworkDir root n |> Option.map (fun p -> n.Name, ((if isNull n.Version then Version() else n.Version), p)))
                let found = next |> List.fold (fun m (n, vp) -> Map.add n vp m) found
                walk (rest @ List.map (snd >> snd) next) found
        walk [ workerDll ] (Map.ofList [ "Parsl.Workers", (Version(), workerDll) ])
        |> Map.toList
        |> List.map (fun (n, (_, p)) -> n, p)

    /// A folder holding links to the worker's assemblies and its runtimeconfig, made once per set of files (its name
    /// is their hash) and atomically (built under another name, then renamed), so concurrent clients share it.
    let private materialize (workerDll: string) =
        let files = closure workerDll
        let key =
            files
            |> List.map (fun (n, p) -> let i = FileInfo p in sprintf "%s|%s|%d|%d" n p i.Length i.LastWriteTimeUtc.Ticks)
            |> String.concat "\n"
        let hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes key)).Substring(0, 24).ToLowerInvariant()
        // Under the user's own data folder, not the shared temp folder: a folder another user made first must never
        // be what our managers run. (On a cluster it is usually in the home directory, which the nodes see.)
        let userData =
            match Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create) with
            | "" -> Path.Combine(Path.GetTempPath(), "parsl-net-" + Environment.UserName)
            | d -> d
        let baseDir = Path.Combine(userData, "parsl-net", "workers")
        let dir = Path.Combine(baseDir, hash)
        let target = Path.Combine(dir, WorkerDll)
        if not (File.Exists target) then
            let privateDir d =
                if OperatingSystem.IsWindows() then Directory.CreateDirectory d |> ignore
                else Directory.CreateDirectory(d, UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute) |> ignore
            privateDir baseDir
            // Folders whose packages are gone (a cleared NuGet cache) are removed on the way; best effort.
            for other in Directory.GetDirectories baseDir do
                try
                    let core = FileInfo(Path.Combine(other, "Parsl.Node.dll"))
                    if not (isNull core.LinkTarget) && not (File.Exists(core.LinkTarget)) then Directory.Delete(other, true)
                with _ -> ()
            let staging = dir + ".tmp-" + string Environment.ProcessId
            if Directory.Exists staging then Directory.Delete(staging, true)
            privateDir staging
            // The worker and its runtimeconfig are copies: the runtime resolves links in the application's path, and
            // would look for the rest beside the package's copy. The dependencies are links (they can be large).
            let copy (path: string) = File.Copy(path, Path.Combine(staging, Path.GetFileName path))
            copy workerDll
            copy (runtimeConfigOf workerDll)
            for _, p in files do
                if p <> workerDll then File.CreateSymbolicLink(Path.Combine(staging, Path.GetFileName p), p) |> ignore
            try Directory.Move(staging, dir)
            with _ when Directory.Exists dir -> Directory.Delete(staging, true)   // another client made it first
        target

    /// The command that starts the worker (program first), or why there is none, naming the fix.
    let defaultCommand () : Result<string list, string> =
        let beside = Path.Combine(AppContext.BaseDirectory, WorkerDll)
        if File.Exists beside then
            if File.Exists(runtimeConfigOf beside) then Ok [ "dotnet"; beside ]
            else
                Error(
                    sprintf "%s is next to the application but %s is not, so the runtime cannot start it; reference the Parsl.Workers package (its build targets copy both) or project, or copy the runtimeconfig.json from the package's lib folder"
                        beside (Path.GetFileName(runtimeConfigOf beside)))
        else
            match packageWorker () with
            | Some dll ->
                try Ok [ "dotnet"; materialize dll ]
                with e -> Error(sprintf "the Parsl.Workers package was found (%s) but its folder could not be made: %s" dll e.Message)
            | None ->
                Error(
                    sprintf "Parsl.Workers.dll was not found next to the application (%s); add a reference to the Parsl.Workers package (`dotnet add package Parsl.Workers`; in a script, `#r \"nuget: Parsl.Workers\"`) or project, or set WorkerCommand to the command that starts it"
                        beside)
