namespace Parsl.Executors.Mpi

open System
open System.Diagnostics
open System.IO

/// Where the manager on a block's lead node learns the block's nodes.
[<RequireQualifiedAccess>]
module NodeList =
    /// The hosts of a node file: one per line (a first word only, as in `host slots=4`), blank lines and `#` comments
    /// skipped, duplicates dropped (a PBS node file lists a host once per core).
    let parse (text: string) =
        text.Split('\n')
        |> Array.map (fun l -> l.Trim())
        |> Array.filter (fun l -> l <> "" && not (l.StartsWith "#"))
        |> Array.map (fun l -> l.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries)[0])
        |> Array.distinct
        |> List.ofArray

    /// Runs a program and returns its standard output, or Error saying why not.
    let private run (program: string) (args: string list) : Result<string, string> =
        try
            let psi = ProcessStartInfo(program, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
            for a in args do
                psi.ArgumentList.Add a
            use p = Process.Start psi
            let out = p.StandardOutput.ReadToEndAsync()
            let err = p.StandardError.ReadToEndAsync()
            if not (p.WaitForExit 30000) then
                (try p.Kill true with _ -> ())
                Error(sprintf "%s did not answer within 30 s" program)
            elif p.ExitCode <> 0 then Error(sprintf "%s %s exited with %d: %s" program (String.Join(" ", args)) p.ExitCode (err.Result.Trim()))
            else Ok out.Result
        with e -> Error(sprintf "%s could not run: %s" program e.Message)

    /// The block's nodes, from the first that applies: the node file given in the options; Slurm's job
    /// (`scontrol show hostnames $SLURM_NODELIST`); PBS's `$PBS_NODEFILE`; else this host alone (Parsl raises there).
    /// `getenv` reads the environment (a function, so tests can give one).
    let discover (getenv: string -> string) (nodeFile: string option) : Result<string list * string, string> =
        let ofFile (what: string) (path: string) =
            try
                match parse (File.ReadAllText path) with
                | [] -> Error(sprintf "the %s %s lists no host" what path)
                | hosts -> Ok(hosts, what + " " + path)
            with e -> Error(sprintf "the %s %s cannot be read: %s" what path e.Message)
        let env k = match getenv k with null | "" -> None | v -> Some v
        match nodeFile with
        | Some path -> ofFile "node file" path
        | None ->
            match env "SLURM_NODELIST" |> Option.orElse (env "SLURM_JOB_NODELIST") with
            | Some list ->
                run "scontrol" [ "show"; "hostnames"; list ]
                |> Result.bind (fun out ->
                    match parse out with
                    | [] -> Error(sprintf "scontrol show hostnames %s printed no host" list)
                    | hosts -> Ok(hosts, "Slurm's SLURM_NODELIST " + list))
            | None ->
                match env "PBS_NODEFILE" with
                | Some path -> ofFile "PBS_NODEFILE" path
                | None -> Ok([ Environment.MachineName ], "this host")

    /// Whether the `mpiexec` program is Open MPI's, from its `--version` (false when it cannot be run: Hydra's syntax
    /// is Parsl's default).
    let mpiexecIsOpenMpi (program: string) =
        match run program [ "--version" ] with
        | Ok text -> Prefix.isOpenMpiVersion text
        | Error _ -> false
