module Parsl.Tests.ProvidersLauncherTests

open System
open Expecto
open FsCheck
open Parsl.Providers

let wrap (l: ILauncher) cmd tpn nodes = l.Wrap(cmd, tpn, nodes)

let lines (s: string) = s.Split('\n') |> Array.map (fun l -> l.TrimEnd())

/// The launch line Parsl produces must appear as a whole line of our script.
let hasLine (expected: string) (script: string) =
    Expect.contains (lines script |> Array.map (fun l -> l.Trim())) expected (sprintf "launch line missing from:\n%s" script)

let bashSyntaxOk (script: string) =
    let file = IO.Path.GetTempFileName()
    IO.File.WriteAllText(file, script)
    let code, _ = Harness.sh (sprintf "bash -n %s" file)
    IO.File.Delete file
    code = 0

let scriptLaunchers: (string * ILauncher) list =
    [ "srun", SrunLauncher()
      "srunmpi", SrunMPILauncher()
      "aprun", AprunLauncher()
      "jsrun", JsrunLauncher()
      "mpiexec", MpiExecLauncher()
      "mpirun", MpiRunLauncher()
      "parallel", GnuParallelLauncher() ]

// Expected lines are what Parsl's launchers (parsl/launchers/launchers.py) print for the same inputs.
let tests =
    testList "Providers.Launchers" [
        test "WrappedLauncher prepends, as Parsl's test_wrapped_launcher" {
            Expect.equal (wrap (WrappedLauncher "docker") "test" 1 1) "docker test" "wrapped"
            Expect.equal (wrap (WrappedLauncher "docker") "test" 2 2) "docker test" "counts ignored"
        }
        test "SrunLauncher: one srun for tasks x nodes, overrides in place" {
            let s = wrap (SrunLauncher "--mpi=pmix") "worker --block 1" 2 3
            hasLine "srun --ntasks 6 -l --mpi=pmix bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh" s
            hasLine "export CORES=$SLURM_CPUS_ON_NODE" s
            hasLine "worker --block 1" s
            hasLine "srun --ntasks 4 -l  bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh" (wrap (SrunLauncher()) "w" 4 1)
        }
        test "SrunMPILauncher: an srun per task block" {
            let s = wrap (SrunMPILauncher()) "w" 3 2
            hasLine "TASKBLOCKS=6" s
            hasLine "srun --ntasks $CORES_PER_BLOCK -l  bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh &" s
            hasLine "srun --exclusive --nodes $NODES_PER_BLOCK -l  bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh &" s
        }
        test "AprunLauncher and JsrunLauncher: -n tasks per block, per-node count" {
            hasLine "aprun -n 6 -N 3  /bin/bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh &" (wrap (AprunLauncher()) "w" 3 2)
            hasLine "aprun -n 2 -N 2 -cc none /bin/bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh &" (wrap (AprunLauncher "-cc none") "w" 2 1)
            hasLine "jsrun -n 6 -r 3  /bin/bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh &" (wrap (JsrunLauncher()) "w" 3 2)
        }
        test "MpiExecLauncher and MpiRunLauncher: WORKERCOUNT ranks over the host file" {
            let e = wrap (MpiExecLauncher()) "w" 2 2
            hasLine "WORKERCOUNT=4" e
            hasLine "mpiexec --bind-to none  -n $WORKERCOUNT --hostfile $HOSTFILE /usr/bin/sh ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh" e
            let r = wrap (MpiRunLauncher()) "w" 2 2
            hasLine "mpirun -np $WORKERCOUNT  /bin/bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$JOBNAME.sh" r
        }
        test "GnuParallelLauncher: jobs per node over the node file" {
            let s = wrap (GnuParallelLauncher()) "w" 3 2
            hasLine "WORKERCOUNT=6" s
            hasLine "parallel --env _ --joblog \"$JOBNAME.sh.parallel.log\" --sshloginfile $SSHLOGINFILE --jobs 3 < $PFILE" s
        }
        test "Launchers refuse zero tasks or nodes, naming the argument" {
            for name, l in scriptLaunchers do
                Expect.throwsT<ArgumentException> (fun () -> wrap l "w" 0 1 |> ignore) (name + " tasks")
                Expect.throwsT<ArgumentException> (fun () -> wrap l "w" 1 0 |> ignore) (name + " nodes")
        }
        test "The command is written unexpanded, so per-task variables survive" {
            let s = wrap (SrunLauncher()) "echo $SLURM_PROCID `hostname`" 1 1
            hasLine "cat > ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh <<'PARSL_CMD_EOF'" s
            hasLine "echo $SLURM_PROCID `hostname`" s
        }
        test "AprunLauncher's script runs the command through a stand-in aprun" {
            // A stand-in `aprun` on PATH that runs `-n` copies, so the script's own logic is exercised by bash.
            let d = IO.Directory.CreateTempSubdirectory("parsl-launcher").FullName
            IO.File.WriteAllText(IO.Path.Combine(d, "aprun"),
                "#!/bin/bash\nn=$2; shift 4; for i in $(seq $n); do \"$@\" & done; wait\n")
            let script = IO.Path.Combine(d, "job.sh")
            IO.File.WriteAllText(script, wrap (AprunLauncher()) (sprintf "echo ran >> %s/out" d) 3 1)
            let code, _ = Harness.sh (sprintf "cd %s && chmod +x aprun && PATH=%s:$PATH JOBNAME=j PARSL_SCRIPT_DIR=%s bash job.sh" d d d)
            Expect.equal code 0 "script exit"
            Expect.equal (IO.File.ReadAllLines(IO.Path.Combine(d, "out")).Length) 3 "three copies ran"
            Expect.isTrue (IO.File.Exists(IO.Path.Combine(d, "cmd_j.sh"))) "command file in PARSL_SCRIPT_DIR"
        }
        testPropertyWithConfig { FsCheckConfig.defaultConfig with maxTest = 15 } "Every script launcher emits valid bash for any command and counts" (fun (cmd: NonNull<string>) (PositiveInt tpn) (PositiveInt nodes) ->
            let cmd = cmd.Get.Replace("\000", "").Replace("PARSL_CMD_EOF", "x")
            let tpn, nodes = min tpn 64, min nodes 64
            scriptLaunchers |> List.forall (fun (_, l) -> bashSyntaxOk (wrap l ("echo " + Harness.quote cmd) tpn nodes)))
    ]
