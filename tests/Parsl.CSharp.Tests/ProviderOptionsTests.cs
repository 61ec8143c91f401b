using Parsl.Providers;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>Every provider, launcher and the SSH channel from C# options: the options reach the core provider (its
/// batch script is rendered from them by the same pure functions the F# tests check against Parsl's), and bad values
/// fail the load naming the C# property. PBS Pro, Torque, Condor and LSF have no server here: their scripts are
/// checked, not submitted.</summary>
public class ProviderOptionsTests
{
    private static readonly ScriptRequest Request = new(
        "parsl.htex.block-3.1700000000.000000", "/home/u/run/submit_scripts", "/home/u/run/submit_scripts/b3.stdout",
        "/home/u/run/submit_scripts/b3.stderr", 4, "worker_pool --block 3\n");

    private static string[] Lines(string script) => script.Split('\n').Select(l => l.TrimEnd()).ToArray();

    private static async Task<ConfigurationError> LoadFailure(ProviderOptions provider)
    {
        var options = Options(o => o.Executors.Add(new HighThroughputExecutorOptions { Provider = provider }));
        return await Assert.ThrowsAsync<ConfigurationError>(() => Dfk.LoadAsync(options));
    }

    [Fact]
    public void Slurm_options_become_sbatch_directives_and_the_launcher_the_launch_line()
    {
        var o = new SlurmProviderOptions
        {
            Partition = "debug", Account = "proj1", Qos = "high", Constraint = "knl", Clusters = "c1", GpusPerNode = 2,
            Gres = "gpu:a100:2", NodesPerBlock = 3, CoresPerNode = 8, MemPerNode = 16, Walltime = "01:30:00", Exclusive = false,
            SchedulerOptions = "#SBATCH --mail-type=NONE", WorkerInit = "module load dotnet", Launcher = new SrunLauncherOptions(),
        };
        var core = o.ToCore();
        var s = Lines(Slurm.render(core, Request));
        foreach (var l in new[] { "#SBATCH --partition=debug", "#SBATCH --account=proj1", "#SBATCH --qos=high", "#SBATCH --constraint=knl",
                     "#SBATCH --clusters=c1", "#SBATCH --gpus-per-node=2", "#SBATCH --gres=gpu:a100:2", "#SBATCH --nodes=3",
                     "#SBATCH --time=90", "#SBATCH --mem=16g", "#SBATCH --cpus-per-task=2", "#SBATCH --mail-type=NONE",
                     "module load dotnet", "export PARSL_CORES=2", "export PARSL_MEMORY_GB=16" })
            Assert.Contains(l, s);
        Assert.DoesNotContain("#SBATCH --exclusive", s);
        Assert.Equal("SrunLauncher", core.Launcher.Name);
        Assert.IsType<SlurmProvider>(o.Build());
        // The defaults are the F# core's (Parsl's).
        var d = new SlurmProviderOptions().ToCore();
        Assert.Equal(Slurm.defaults.Walltime, d.Walltime);
        Assert.Equal(Slurm.defaults.CmdTimeout, d.CmdTimeout);
        Assert.Equal("SingleNodeLauncher", d.Launcher.Name);
        Assert.True(d.Channel.IsLocal);
    }

    [Fact]
    public void GridEngine_PBSPro_Torque_Condor_and_LSF_render_their_batch_scripts()
    {
        var geOptions = new GridEngineProviderOptions { Queue = "all.q", Walltime = "00:30:00", WorkerInit = "source env" }.ToCore();
        var ge = Lines(GridEngine.render(geOptions, Request));
        Assert.Contains("#$ -l h_rt=00:30:00", ge);
        Assert.Contains("source env", ge);
        Assert.Equal("qsub -q 'all.q' -terse '/s/j'", GridEngine.submitCommand(geOptions, "/s/j"));

        var pbs = Lines(PbsPro.render(new PBSProProviderOptions
        {
            NodesPerBlock = 2, CpusPerNode = 64, SelectOptions = "ngpus=4", SchedulerOptions = "#PBS -l filesystems=home",
        }.ToCore(), Request));
        foreach (var l in new[] { "#PBS -l walltime=00:20:00", "#PBS -l select=2:ncpus=64:ngpus=4", "#PBS -l filesystems=home",
                     "#PBS -o /home/u/run/submit_scripts/b3.stdout", "worker_pool --block 3" })
            Assert.Contains(l, pbs);

        var torque = new TorqueProviderOptions { NodesPerBlock = 4, SchedulerOptions = "#PBS -A proj" }.ToCore();
        Assert.Contains("#PBS -l nodes=4:ppn=4", Lines(Torque.render(torque, Request)));
        Assert.Equal("AprunLauncher", torque.Launcher.Name);

        var condor = new CondorProviderOptions { CoresPerSlot = 4, Requirements = "OpSys == \"LINUX\"", Project = "p1" };
        condor.Environment["OMP_NUM_THREADS"] = "1";
        condor.TransferInputFiles.Add("/data/in.txt");
        var submit = Condor.render(condor.ToCore(), Request);
        Assert.Contains("OMP_NUM_THREADS", submit);
        Assert.Contains("/data/in.txt", submit);
        Assert.Contains("export PARSL_CORES=4", Condor.jobScript(condor.ToCore(), Request));

        var lsf = Lines(Lsf.render(new LSFProviderOptions { Walltime = "02:30:00", Project = "CSC1", Queue = "batch", NodesPerBlock = 2 }.ToCore(), Request));
        foreach (var l in new[] { "#BSUB -W 150", "#BSUB -P CSC1", "#BSUB -q batch", "#BSUB -nnodes 2" })
            Assert.Contains(l, lsf);
        var byCores = new LSFProviderOptions { RequestByNodes = false, CoresPerBlock = 80, CoresPerNode = 42 }.ToCore();
        Assert.Contains("#BSUB -n 80", Lines(Lsf.render(byCores, Request)));
    }

    [Fact]
    public void Kubernetes_options_shape_the_pod()
    {
        var o = new KubernetesProviderOptions { Image = "parsl/worker:1", Namespace = "science", MaxCpu = 4, InitCpu = 2, MaxMem = "2Gi", UserId = 1000, GroupId = 1000 };
        o.PersistentVolumes["scratch"] = "/scratch";
        o.Annotations["team"] = "a";
        var pod = Parsl.Providers.Kubernetes.pod(o.ToCore(), "parsl-block-0", "0", "worker_pool");
        var container = Assert.Single(pod.Spec.Containers);
        Assert.Equal("parsl/worker:1", container.Image);
        Assert.Equal("/scratch", Assert.Single(container.VolumeMounts).MountPath);
        Assert.Equal(1000, container.SecurityContext.RunAsUser);
        Assert.Equal("a", pod.Metadata.Annotations["team"]);
        Assert.Equal("science", o.ToCore().Namespace);
    }

    [Fact]
    public void Each_launcher_gives_the_launch_line_Parsl_does()
    {
        Assert.Equal("docker run --rm img worker", new WrappedLauncherOptions { Prepend = "docker run --rm img" }.Wrap("worker", 2, 2));
        Assert.Equal("worker", new SimpleLauncherOptions().Wrap("worker", 4, 1));
        Assert.Contains("srun --ntasks 4 -l  bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh", new SrunLauncherOptions().Wrap("w", 4, 1));
        Assert.Contains("--mpi=pmix", new SrunLauncherOptions { Overrides = "--mpi=pmix" }.Wrap("w", 2, 3));
        var names = new LauncherOptions[]
        {
            new SingleNodeLauncherOptions { FailOnAny = true }, new SrunMPILauncherOptions(), new AprunLauncherOptions(), new JsrunLauncherOptions(),
            new MpiExecLauncherOptions(), new MpiRunLauncherOptions(), new GnuParallelLauncherOptions(),
        }.Select(l => l.ToString());
        Assert.Equal(["SingleNodeLauncher", "SrunMPILauncher", "AprunLauncher", "JsrunLauncher", "MpiExecLauncher", "MpiRunLauncher", "GnuParallelLauncher"], names);
        Assert.Contains("aprun -n 6", new AprunLauncherOptions().Wrap("w", 3, 2));
        Assert.Contains("mpiexec", new MpiExecLauncherOptions().Wrap("w", 2, 2));
        Assert.Throws<ArgumentNullException>(() => new SimpleLauncherOptions().Wrap(null!, 1, 1));
    }

    [Fact]
    public void The_SSH_channel_carries_the_host_key_fingerprint()
    {
        var o = new SlurmProviderOptions
        {
            Channel = new SshChannelOptions
            {
                Host = "login.cluster.org", Username = "me", Port = 2222, Password = "pw",
                HostKeyFingerprint = "SHA256:HzRYtJihO+TN1SWvAgvqgRdZAkiS2Dl0THAaISpRhL0",
            },
        };
        var channel = Assert.IsType<Channel.Ssh>(o.ToCore().Channel, exactMatch: false);
        Assert.Equal("login.cluster.org", channel.Item.Host);
        Assert.Equal(2222, channel.Item.Port);
        Assert.Equal("SHA256:HzRYtJihO+TN1SWvAgvqgRdZAkiS2Dl0THAaISpRhL0", channel.Item.HostKeyFingerprint.Value);
        Assert.False(channel.Item.AcceptAnyHostKey);
    }

    [Theory]
    [InlineData("slurm-walltime", "SlurmProviderOptions.Walltime")]
    [InlineData("slurm-blocks", "SlurmProviderOptions.MaxBlocks")]
    [InlineData("ssh-fingerprint", "SlurmProviderOptions.Channel.HostKeyFingerprint")]
    [InlineData("ssh-credentials", "GridEngineProviderOptions.Channel.PrivateKeyFile")]
    [InlineData("ge-queue", "GridEngineProviderOptions.Queue")]
    [InlineData("pbs-cpus", "PBSProProviderOptions.CpusPerNode")]
    [InlineData("torque-timeout", "TorqueProviderOptions.CmdTimeout")]
    [InlineData("condor-chunk", "CondorProviderOptions.CmdChunkSize")]
    [InlineData("lsf-cores", "LSFProviderOptions.CoresPerBlock")]
    [InlineData("k8s-image", "KubernetesProviderOptions.Image")]
    [InlineData("local-blocks", "LocalProviderOptions.NodesPerBlock")]
    public async Task A_bad_provider_option_fails_the_load_naming_the_CSharp_property(string problem, string field)
    {
        ProviderOptions provider = problem switch
        {
            "slurm-walltime" => new SlurmProviderOptions { Walltime = "ten minutes" },
            "slurm-blocks" => new SlurmProviderOptions { MinBlocks = 3, MaxBlocks = 1 },
            "ssh-fingerprint" => new SlurmProviderOptions { Channel = new SshChannelOptions { Host = "h", Username = "u", Password = "p" } },
            "ssh-credentials" => new GridEngineProviderOptions { Channel = new SshChannelOptions { Host = "h", Username = "u", AcceptAnyHostKey = true } },
            "ge-queue" => new GridEngineProviderOptions { Queue = "two queues" },
            "pbs-cpus" => new PBSProProviderOptions { CpusPerNode = 0 },
            "torque-timeout" => new TorqueProviderOptions { CmdTimeout = TimeSpan.Zero },
            "condor-chunk" => new CondorProviderOptions { CmdChunkSize = 0 },
            "lsf-cores" => new LSFProviderOptions { RequestByNodes = false, CoresPerNode = 4 },
            "k8s-image" => new KubernetesProviderOptions(),
            _ => new LocalProviderOptions { NodesPerBlock = 0 },
        };
        var e = await LoadFailure(provider);
        Assert.Equal(field, e.Field);
        Assert.StartsWith(field + ": ", e.Message);
        Assert.DoesNotContain("Some(", e.Message);
    }
}
