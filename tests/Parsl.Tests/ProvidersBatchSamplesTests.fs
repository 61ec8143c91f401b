/// PBS Pro, Torque, HTCondor and LSF have no server that installs on Debian, so their scripts and the parsing of
/// their commands' output are tested here on samples (written in the format each tool documents and prints).
module Parsl.Tests.ProvidersBatchSamplesTests

open Expecto
open Parsl.Providers

let req = ProvidersGridEngineTests.request
let lines = ProvidersSlurmTests.scriptLines
let fields (errs: Parsl.ConfigurationError list) = errs |> List.map (fun e -> e.Field) |> List.sort

let pbs =
    testList "Providers.PbsPro" [
        test "select with ncpus and select options, walltime, output paths" {
            let o = { PbsPro.defaults with NodesPerBlock = 2; CpusPerNode = 64; SelectOptions = "ngpus=4"; SchedulerOptions = "#PBS -l filesystems=home"; WorkerInit = "module load x" }
            let s = PbsPro.render o req |> lines
            for l in [ "#PBS -S /bin/bash"; "#PBS -N parsl.htex.block-3.1700000000.000000"; "#PBS -m n"; "#PBS -l walltime=00:20:00"
                       "#PBS -l select=2:ncpus=64:ngpus=4"; "#PBS -o /home/u/run/submit_scripts/b3.stdout"; "#PBS -e /home/u/run/submit_scripts/b3.stderr"
                       "#PBS -l filesystems=home"; "module load x"; "worker_pool" ] do
                Expect.contains s l l
            Expect.contains (PbsPro.render { o with SelectOptions = ":mem=10gb" } req |> lines) "#PBS -l select=2:ncpus=64:mem=10gb" "colon kept"
        }
        test "qsub flags and the id it prints" {
            Expect.equal (Pbs.submitCommand (Some "debug") (Some "proj") "/s/j") "qsub -q 'debug' -A 'proj' '/s/j'" "flags"
            Expect.equal (Pbs.parseSubmit "1234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n") (Some "1234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov") "id"
        }
        test "qstat -x -f -F json: states, exit codes, shortened ids coerced" {
            // Sample in the shape of PBS Pro 2022's `qstat -x -f -F json` (trimmed to the fields used).
            let json = """{"timestamp":1700000000,"pbs_version":"2022.1.1","pbs_server":"pbs01","Jobs":{
                "101.pbs01":{"Job_Name":"a","job_state":"R"},
                "102.pbs01":{"Job_Name":"b","job_state":"Q"},
                "103.pbs01":{"Job_Name":"c","job_state":"F","Exit_status":0},
                "104.pbs01":{"Job_Name":"d","job_state":"F","Exit_status":271},
                "105.pbs01":{"Job_Name":"e","job_state":"H"}}}"""
            let r = PbsPro.parseStatus [ "101.pbs01.example.org"; "102.pbs01"; "103.pbs01"; "104.pbs01"; "105.pbs01" ] json
            Expect.equal (r |> List.map (fun x -> x.JobId, x.State, x.ExitCode))
                [ "101.pbs01.example.org", JobState.Running, None; "102.pbs01", JobState.Pending, None; "103.pbs01", JobState.Completed, Some 0
                  "104.pbs01", JobState.Failed, Some 271; "105.pbs01", JobState.Held, None ] "rows"
            Expect.isEmpty (PbsPro.parseStatus [] """{"timestamp":1,"Jobs":{}}""") "none"
        }
        test "Validate names fields" {
            Expect.equal (fields (PbsPro.validate { PbsPro.defaults with CpusPerNode = 0; Walltime = "" }))
                [ "PBSProProvider.CpusPerNode"; "PBSProProvider.Walltime" ] "fields"
        }
    ]

let torque =
    testList "Providers.Torque" [
        test "scheduler options first, nodes:ppn from tasks per node, Aprun by default" {
            let s = Torque.render { Torque.defaults with NodesPerBlock = 4; SchedulerOptions = "#PBS -A proj" } { req with TasksPerNode = 8 } |> lines
            Expect.equal s[2] "#PBS -A proj" "options first"
            Expect.contains s "#PBS -l nodes=4:ppn=8" "nodes"
            Expect.equal Torque.defaults.Launcher.Name "AprunLauncher" "default launcher"
        }
        test "qstat table (sample Torque 6 output)" {
            let out =
                "Job ID                    Name             User            Time Use S Queue\n" +
                "------------------------- ---------------- --------------- -------- - -----\n" +
                "201.torque01              parsl.a          u               00:00:01 R batch\n" +
                "202.torque01              parsl.b          u                      0 Q batch\n" +
                "203.torque01              parsl.c          u               00:00:09 C batch\n"
            Expect.equal (Torque.parseStatus [ "201.torque01.cluster"; "202.torque01"; "203.torque01" ] out |> List.map (fun x -> x.JobId, x.State))
                [ "201.torque01.cluster", JobState.Running; "202.torque01", JobState.Pending; "203.torque01", JobState.Completed ] "rows"
        }
    ]

let condor =
    testList "Providers.Condor" [
        test "submit description: vanilla universe, transfers the job script, resources, environment quoting" {
            let o = { Condor.defaults with CoresPerSlot = Some 4; MemPerSlot = Some 2.0; Requirements = "OpSys == \"LINUX\""; Project = "p1"
                                           Environment = Map [ "GREETING", "it's \"ok\"" ]; TransferInputFiles = [ "/data/in.txt" ] }
            let s = Condor.render o req |> lines
            for l in [ "universe                = vanilla"; "transfer_input_files    = /home/u/run/submit_scripts/parsl.htex.block-3.1700000000.000000.script,/data/in.txt"
                       "arguments               = parsl.htex.block-3.1700000000.000000.script"; "executable              = /bin/bash"
                       "requirements            = OpSys == \"LINUX\""; "+projectname            = p1"; "RequestMemory = 2048"; "RequestCpus = 4"
                       "environment             = \"GREETING='it''s \"\"ok\"\"' JOBNAME='parsl.htex.block-3.1700000000.000000'\""; "queue" ] do
                Expect.contains s l l
            let js = Condor.jobScript o req |> lines
            Expect.containsAll js [ "export PARSL_MEMORY_GB=2"; "export PARSL_CORES=4"; "worker_pool" ] "job script"
        }
        test "condor_submit and condor_q output (samples)" {
            Expect.equal (Condor.parseSubmit "Submitting job(s).\n1 job(s) submitted to cluster 118907.\n") (Some "118907.0") "id"
            let r = Condor.parseStatus "118907.0 2 undefined\n118908.0 4 0\n118909.0 4 3\n118910.0 1 undefined\n118911.0 5 undefined\n"
            Expect.equal (r |> List.map (fun x -> x.JobId, x.State, x.ExitCode))
                [ "118907.0", JobState.Running, None; "118908.0", JobState.Completed, Some 0; "118909.0", JobState.Failed, Some 3
                  "118910.0", JobState.Pending, None; "118911.0", JobState.Failed, None ] "rows"
            Expect.equal (Condor.cancelCommand [ "1.0"; "2.0" ]) "condor_rm '1.0' '2.0'; condor_rm -forcex '1.0' '2.0'" "rm"
        }
        test "Validate names fields" {
            Expect.equal (fields (Condor.validate { Condor.defaults with MemPerSlot = Some 0.0; CmdChunkSize = 0; Environment = Map [ "BAD NAME", "x" ] }))
                [ "CondorProvider.CmdChunkSize"; "CondorProvider.Environment"; "CondorProvider.MemPerSlot" ] "fields"
        }
    ]

let lsf =
    testList "Providers.Lsf" [
        test "walltime in minutes, project, queue, by nodes or by cores" {
            let s = Lsf.render { Lsf.defaults with Walltime = "02:30:00"; Project = Some "CSC1"; Queue = Some "batch"; NodesPerBlock = 2 } req |> lines
            for l in [ "#BSUB -W 150"; "#BSUB -J parsl.htex.block-3.1700000000.000000"; "#BSUB -P CSC1"; "#BSUB -q batch"; "#BSUB -nnodes 2" ] do
                Expect.contains s l l
            let byCores = { Lsf.defaults with RequestByNodes = false; CoresPerBlock = Some 80; CoresPerNode = Some 42 }
            let c = Lsf.render byCores req |> lines
            Expect.containsAll c [ "#BSUB -n 80"; "#BSUB -R \"span[ptile=42]\"" ] "cores"
            Expect.equal (Lsf.nodesPerBlock byCores) 2 "ceil(80/42)"
        }
        test "bsub and bjobs output (samples)" {
            Expect.equal (Lsf.parseSubmit "Job <4711> is submitted to queue <batch>.\n") (Some "4711") "id"
            Expect.equal (Lsf.submitCommand { Lsf.defaults with BsubRedirection = true } "/s/j.submit") "bsub < '/s/j.submit'" "redirect"
            let r = Lsf.parseStatus "4711 RUN -\n4712 PEND -\n4713 DONE -\n4714 EXIT 2\n4715 USUSP -\n"
            Expect.equal (r |> List.map (fun x -> x.JobId, x.State, x.ExitCode))
                [ "4711", JobState.Running, None; "4712", JobState.Pending, None; "4713", JobState.Completed, None
                  "4714", JobState.Failed, Some 2; "4715", JobState.Held, None ] "rows"
        }
        test "Validate: request by cores needs both core counts" {
            Expect.equal (fields (Lsf.validate { Lsf.defaults with RequestByNodes = false }))
                [ "LSFProvider.CoresPerBlock"; "LSFProvider.CoresPerNode" ] "fields"
        }
    ]

let tests = testList "Providers.Samples" [ pbs; torque; condor; lsf ]
