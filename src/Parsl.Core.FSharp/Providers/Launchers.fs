namespace Parsl.Providers

open System

/// Pieces of shell shared by the launchers. The launch lines themselves match Parsl's
/// (`parsl/launchers/launchers.py`) for the same inputs, so site documentation written for Parsl applies.
module internal LauncherScript =
    /// The command file goes into the submit-script directory when the block can see it (the provider exports
    /// `PARSL_SCRIPT_DIR`), and into the job's working directory otherwise, as Parsl does with its `script_dir`.
    let scriptDirLines =
        [ "SCRIPT_DIR=\"${PARSL_SCRIPT_DIR:-}\""
          "[[ -d $SCRIPT_DIR ]] || SCRIPT_DIR=\"\"" ]

    /// Writes `command` to `path` unexpanded. The quoted here-document delimiter is deliberate: Parsl's unquoted
    /// one expands `$VARS` once, when the file is written, so per-task variables (`$SLURM_PROCID`, ...) were lost.
    let writeCommandFile (path: string) (command: string) (mode: string) =
        [ sprintf "cat > %s <<'PARSL_CMD_EOF'" path
          command.TrimEnd('\n')
          "PARSL_CMD_EOF"
          sprintf "chmod %s %s" mode path ]

    let debugEcho debug (text: string) =
        if debug then [ sprintf "echo \"%s\"" text ] else []

    let join (lines: string list) = String.Join("\n", lines) + "\n"

    /// The opening of the srun launchers: Slurm's node and core counts, then the worker count.
    let slurmPrelude debug (total: int) =
        [ "set -e"
          "export CORES=$SLURM_CPUS_ON_NODE"
          "export NODES=$SLURM_JOB_NUM_NODES" ]
        @ debugEcho debug "Slurm gives $NODES node(s), $CORES core(s) per node"
        @ [ sprintf "WORKERCOUNT=%d" total ]

    /// The command file, written where the block can find it.
    let commandFile (file: string) (command: string) = scriptDirLines @ writeCommandFile file command "a+x"

    /// A launcher that starts every copy with one tool invocation (`aprun`, `jsrun`): `launch total file` is its line.
    let oneStep debug (total: int) (command: string) (launch: int -> string -> string) (finished: string) =
        let file = "${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh"
        join (
            [ "set -e"; sprintf "WORKERCOUNT=%d" total ]
            @ commandFile file command
            @ [ launch total file; "wait" ]
            @ debugEcho debug finished)

    /// The MPI-style script (mpiexec, mpirun, GNU parallel): the node's core count, the worker count, the command
    /// file, then `launch file` starts every copy at once. `before` comes ahead of the command file (the host list).
    let allAtOnce debug (name: string) (total: int) (command: string) (before: string list) (launch: string -> string list) =
        let file = "${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh"
        join (
            [ "set -e"; "export CORES=$(getconf _NPROCESSORS_ONLN)" ]
            @ debugEcho debug "$CORES core(s) on this node"
            @ [ sprintf "WORKERCOUNT=%d" total ]
            @ scriptDirLines
            @ before
            @ writeCommandFile file command "u+x"
            @ launch file
            @ debugEcho debug (name + " finished"))

    let checkCounts (name: string) tasksPerNode nodesPerBlock =
        if tasksPerNode < 1 then
            invalidArg "tasksPerNode" (sprintf "%s: tasks per node must be at least 1, got %d" name tasksPerNode)
        if nodesPerBlock < 1 then
            invalidArg "nodesPerBlock" (sprintf "%s: nodes per block must be at least 1, got %d" name nodesPerBlock)

/// A launcher that writes a script around the command for one tool that takes extra arguments (`srun`, `aprun`,
/// `jsrun`, `mpiexec`, `mpirun`). The counts are checked, then `Script` gets the command, the tasks per node and the
/// total number of copies (tasks per node × nodes per block).
[<AbstractClass>]
type ScriptLauncher(name: string, overrides: string) =
    /// Extra arguments for the launcher's tool.
    member _.Overrides = overrides
    /// The script that starts `total` copies of `command`, `tasksPerNode` on each node.
    abstract Script: command: string * tasksPerNode: int * total: int -> string
    interface ILauncher with
        member _.Name = name
        member this.Wrap(command, tasksPerNode, nodesPerBlock) =
            LauncherScript.checkCounts name tasksPerNode nodesPerBlock
            this.Script(command, tasksPerNode, tasksPerNode * nodesPerBlock)

/// Prepends a command, for example a container runtime (Parsl's `WrappedLauncher`). Ignores the task and node
/// counts: one copy of the command runs.
type WrappedLauncher(prepend: string) =
    /// What goes before the command, as `docker run --rm image` or `time`.
    member _.Prepend = prepend
    interface ILauncher with
        member _.Name = "WrappedLauncher"
        member _.Wrap(command, _, _) = sprintf "%s %s" prepend command

/// Starts `tasks per node × nodes per block` copies with one `srun` (Parsl's `SrunLauncher`). Use inside Slurm
/// allocations; `CORES` and `NODES` come from Slurm's environment.
type SrunLauncher(overrides: string, debug: bool) =
    inherit ScriptLauncher("SrunLauncher", overrides)
    /// `srun` with no extra arguments, echoing progress to the job's output.
    new() = SrunLauncher("", true)
    /// `srun` with extra arguments (as `--mpi=pmix` or `--cpu-bind=none`).
    new(overrides: string) = SrunLauncher(overrides, true)
    override _.Script(command, tasksPerNode, total) =
        let file = "${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh"
        LauncherScript.join (
            LauncherScript.slurmPrelude debug total
            @ LauncherScript.commandFile file command
            @ [ sprintf "srun --ntasks %d -l %s bash %s" total overrides file ]
            @ LauncherScript.debugEcho debug "srun finished")

/// One `srun` per worker, each with its own share of the allocation, for blocks whose workers launch MPI
/// applications (Parsl's `SrunMPILauncher`). With more workers than nodes each gets `nodes × cores / workers`
/// tasks; otherwise each gets whole nodes, exclusively.
type SrunMPILauncher(overrides: string, debug: bool) =
    inherit ScriptLauncher("SrunMPILauncher", overrides)
    /// No extra arguments.
    new() = SrunMPILauncher("", true)
    /// Extra `srun` arguments.
    new(overrides: string) = SrunMPILauncher(overrides, true)
    override _.Script(command, tasksPerNode, total) =
        let file = "${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh"
        LauncherScript.join (
            LauncherScript.slurmPrelude debug total
            @ LauncherScript.commandFile file command
            @ [ sprintf "TASKBLOCKS=%d" total
                "if (( TASKBLOCKS > NODES )); then"
                "    CORES_PER_BLOCK=$(( NODES * CORES / TASKBLOCKS ))"
                "    for blk in $(seq 1 $TASKBLOCKS); do"
                sprintf "        srun --ntasks $CORES_PER_BLOCK -l %s bash %s &" overrides file
                "    done"
                "else"
                "    NODES_PER_BLOCK=$(( NODES / TASKBLOCKS ))"
                "    for blk in $(seq 1 $TASKBLOCKS); do"
                sprintf "        srun --exclusive --nodes $NODES_PER_BLOCK -l %s bash %s &" overrides file
                "    done"
                "fi"
                "wait" ]
            @ LauncherScript.debugEcho debug "all srun steps finished")

/// Starts the copies with Cray's `aprun` (Parsl's `AprunLauncher`; Torque's default).
type AprunLauncher(overrides: string, debug: bool) =
    inherit ScriptLauncher("AprunLauncher", overrides)
    /// No extra arguments.
    new() = AprunLauncher("", true)
    /// Extra `aprun` arguments.
    new(overrides: string) = AprunLauncher(overrides, true)
    override _.Script(command, tasksPerNode, total) =
        LauncherScript.oneStep debug total command
            (fun total file -> sprintf "aprun -n %d -N %d %s /bin/bash %s &" total tasksPerNode overrides file)
            "aprun finished"

/// Starts the copies with IBM's `jsrun` (Parsl's `JsrunLauncher`, for LSF machines such as Summit).
type JsrunLauncher(overrides: string, debug: bool) =
    inherit ScriptLauncher("JsrunLauncher", overrides)
    /// No extra arguments.
    new() = JsrunLauncher("", true)
    /// Extra `jsrun` arguments.
    new(overrides: string) = JsrunLauncher(overrides, true)
    override _.Script(command, tasksPerNode, total) =
        LauncherScript.oneStep debug total command
            (fun total file -> sprintf "jsrun -n %d -r %d %s /bin/bash %s &" total tasksPerNode overrides file)
            "jsrun finished"

/// The host list both MPI launchers and GNU parallel read: the PBS node file without duplicates, or this host.
module internal HostFile =
    let lines (variable: string) =
        [ sprintf "%s=\"$JOBNAME.nodes\"" variable
          "if [ -n \"$PBS_NODEFILE\" ]; then"
          sprintf "    sort -u \"$PBS_NODEFILE\" > $%s" variable
          "else"
          sprintf "    echo localhost > $%s" variable
          "fi" ]

/// Starts the copies with `mpiexec` over the block's hosts (Parsl's `MpiExecLauncher`). `bindCmd` is the
/// option that turns rank binding off (`--bind-to` for Open MPI and MPICH's Hydra, `--cpu-bind` for others).
type MpiExecLauncher(bindCmd: string, overrides: string, debug: bool) =
    inherit ScriptLauncher("MpiExecLauncher", overrides)
    /// `--bind-to none`, no extra arguments.
    new() = MpiExecLauncher("--bind-to", "", true)
    /// Extra `mpiexec` arguments.
    new(overrides: string) = MpiExecLauncher("--bind-to", overrides, true)
    /// The binding option.
    member _.BindCmd = bindCmd
    override _.Script(command, tasksPerNode, total) =
        LauncherScript.allAtOnce debug "mpiexec" total command (HostFile.lines "HOSTFILE") (fun file ->
            [ sprintf "mpiexec %s none %s -n $WORKERCOUNT --hostfile $HOSTFILE /usr/bin/sh %s" bindCmd overrides file ])

/// Starts the copies with `mpirun` (Parsl's `MpiRunLauncher`).
type MpiRunLauncher(bashLocation: string, overrides: string, debug: bool) =
    inherit ScriptLauncher("MpiRunLauncher", overrides)
    /// `/bin/bash`, no extra arguments.
    new() = MpiRunLauncher("/bin/bash", "", true)
    /// Extra `mpirun` arguments.
    new(overrides: string) = MpiRunLauncher("/bin/bash", overrides, true)
    /// The shell each rank runs the command with.
    member _.BashLocation = bashLocation
    override _.Script(command, tasksPerNode, total) =
        LauncherScript.allAtOnce debug "mpirun" total command [] (fun file ->
            [ sprintf "mpirun -np $WORKERCOUNT %s %s %s" overrides bashLocation file ])

/// Spreads the copies over the block's hosts with GNU parallel over SSH (Parsl's `GnuParallelLauncher`):
/// needs `parallel` on the PATH and password-less SSH between the nodes; hosts come from `$PBS_NODEFILE`.
type GnuParallelLauncher(debug: bool) =
    /// Echoing progress to the job's output.
    new() = GnuParallelLauncher(true)
    interface ILauncher with
        member _.Name = "GnuParallelLauncher"
        member _.Wrap(command, tasksPerNode, nodesPerBlock) =
            LauncherScript.checkCounts "GnuParallelLauncher" tasksPerNode nodesPerBlock
            LauncherScript.allAtOnce debug "parallel" (tasksPerNode * nodesPerBlock) command (HostFile.lines "SSHLOGINFILE") (fun file ->
                [ "PFILE=${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_${JOBNAME}.sh.parallel"
                  sprintf "for COUNT in $(seq 1 $WORKERCOUNT); do echo \"sh %s\"; done > $PFILE" file
                  sprintf "parallel --env _ --joblog \"$JOBNAME.sh.parallel.log\" --sshloginfile $SSHLOGINFILE --jobs %d < $PFILE" tasksPerNode ])
