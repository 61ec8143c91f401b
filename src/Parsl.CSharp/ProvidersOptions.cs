using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using Parsl.Providers;

namespace Parsl;

/// <summary>How to reach a cluster's login node over SSH, so that a provider runs its scheduler commands there and
/// copies its scripts there with SFTP. The server must present the host key <see cref="HostKeyFingerprint"/>
/// names, or the connection fails with <c>HostKeyMismatchException</c> naming both keys.</summary>
public sealed class SshChannelOptions
{
    /// <summary>The login node. Required.</summary>
    public string Host { get; set; } = "";

    /// <summary>The SSH port. Default 22.</summary>
    public int Port { get; set; } = 22;

    /// <summary>The remote user. Required.</summary>
    public string Username { get; set; } = "";

    /// <summary>A private key file (OpenSSH format). Either this or <see cref="Password"/>. Default null.</summary>
    public string? PrivateKeyFile { get; set; }

    /// <summary>The key's passphrase, if it has one. Default null.</summary>
    public string? PrivateKeyPassphrase { get; set; }

    /// <summary>Password login, where the site allows it. Default null.</summary>
    public string? Password { get; set; }

    /// <summary>The server's host key fingerprint as OpenSSH prints it (<c>SHA256:...</c>, from
    /// <c>ssh-keyscan host | ssh-keygen -lf -</c>). Required unless <see cref="AcceptAnyHostKey"/>.</summary>
    public string? HostKeyFingerprint { get; set; }

    /// <summary>Skip the host key check. Insecure: only for throw-away test machines. Default false.</summary>
    public bool AcceptAnyHostKey { get; set; }

    /// <summary>Where scripts go on the login node; relative paths are under the remote home. Default <c>.parsl/submit_scripts</c>.</summary>
    public string RemoteScriptDir { get; set; } = ".parsl/submit_scripts";

    /// <summary>How long to wait for the connection. Default 30 s.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(30);

    internal SshOptions Build() =>
        new(Host, Port, Username, ProviderParts.Opt(PrivateKeyFile), ProviderParts.Opt(PrivateKeyPassphrase),
            ProviderParts.Opt(Password), ProviderParts.Opt(HostKeyFingerprint), AcceptAnyHostKey, RemoteScriptDir, ConnectTimeout);
}

/// <summary>Conversions from C# values to the core's option types.</summary>
internal static class ProviderParts
{
    public static FSharpOption<string>? Opt(string? value) => value is null ? null : FSharpOption<string>.Some(value);

    public static FSharpOption<T>? Opt<T>(T? value) where T : struct => value is { } v ? FSharpOption<T>.Some(v) : null;

    public static FSharpMap<string, string> Map(IDictionary<string, string> d) =>
        MapModule.OfSeq(d.Select(kv => Tuple.Create(kv.Key, kv.Value)));

    public static Channel Channel(SshChannelOptions? ssh) => ssh is null ? Parsl.Providers.Channel.Local : Parsl.Providers.Channel.NewSsh(ssh.Build());
}

/// <summary>The options every batch scheduler's provider shares: block counts, walltime, scheduler lines, worker
/// start-up, launcher and where the scheduler's commands run. Defaults are each provider's (Parsl's).</summary>
public abstract class ClusterProviderOptions : ProviderOptions
{
    private protected ClusterProviderOptions(int initBlocks, int minBlocks, int maxBlocks, int nodesPerBlock, double parallelism,
        string walltime, TimeSpan cmdTimeout)
    {
        InitBlocks = initBlocks;
        MinBlocks = minBlocks;
        MaxBlocks = maxBlocks;
        NodesPerBlock = nodesPerBlock;
        Parallelism = parallelism;
        Walltime = walltime;
        CmdTimeout = cmdTimeout;
    }

    /// <summary>Blocks (jobs) submitted when the executor starts (Parsl's <c>init_blocks</c>). Default 1; 0 or more.</summary>
    public int InitBlocks { get; set; }

    /// <summary>The strategy never scales below this many blocks. Default 0.</summary>
    public int MinBlocks { get; set; }

    /// <summary>The strategy never scales above this many blocks. Default 1; at least <see cref="MinBlocks"/>.</summary>
    public int MaxBlocks { get; set; }

    /// <summary>Nodes per block (job). Default 1; at least 1.</summary>
    public int NodesPerBlock { get; set; }

    /// <summary>The ratio of blocks to outstanding work, from 0 to 1 (Parsl's <c>parallelism</c>). Default 1.</summary>
    public double Parallelism { get; set; }

    /// <summary>The job's walltime, <c>HH:MM:SS</c>. Default: the provider's (Parsl's).</summary>
    public string Walltime { get; set; }

    /// <summary>Extra scheduler lines for the batch script (<c>#SBATCH --mail-type=NONE</c>, ...). Default empty.</summary>
    public string SchedulerOptions { get; set; } = "";

    /// <summary>Shell lines run before the launcher (<c>module load dotnet</c>). Default empty.</summary>
    public string WorkerInit { get; set; } = "";

    /// <summary>The limit on each scheduler command. Default: the provider's (Parsl's).</summary>
    public TimeSpan CmdTimeout { get; set; }

    /// <summary>How the worker pool is started on the block's nodes. Default null: the provider's default
    /// (<see cref="SingleNodeLauncherOptions"/>; Torque: <see cref="AprunLauncherOptions"/>).</summary>
    public LauncherOptions? Launcher { get; set; }

    /// <summary>Run the scheduler's commands on a login node over SSH. Default null: on this machine.</summary>
    public SshChannelOptions? Channel { get; set; }

    private protected ILauncher LauncherOr(ILauncher fallback) => Launcher?.Build() ?? fallback;

    private protected Channel BuildChannel() => ProviderParts.Channel(Channel);
}

/// <summary>Blocks are Slurm jobs, submitted with <c>sbatch</c> (Parsl's <c>SlurmProvider</c>). Tested against a
/// real single-node Slurm.</summary>
public sealed class SlurmProviderOptions : ClusterProviderOptions
{
    private static readonly SlurmOptions D = Slurm.defaults;

    /// <summary>Options with Parsl's defaults (walltime 00:10:00, exclusive nodes).</summary>
    public SlurmProviderOptions() : base(D.InitBlocks, D.MinBlocks, D.MaxBlocks, D.NodesPerBlock, D.Parallelism, D.Walltime, D.CmdTimeout) { }

    /// <summary><c>--partition</c>. Default null: none.</summary>
    public string? Partition { get; set; }

    /// <summary><c>--account</c>. Default null.</summary>
    public string? Account { get; set; }

    /// <summary><c>--qos</c>. Default null.</summary>
    public string? Qos { get; set; }

    /// <summary><c>--constraint</c>. Default null.</summary>
    public string? Constraint { get; set; }

    /// <summary><c>--clusters</c>, also passed to squeue, sacct and scancel. Default null.</summary>
    public string? Clusters { get; set; }

    /// <summary>Cores per node: <c>--cpus-per-task</c> = cores / tasks per node; exported as <c>PARSL_CORES</c>. Default null.</summary>
    public int? CoresPerNode { get; set; }

    /// <summary>Memory per node in GB: <c>--mem=&lt;n&gt;g</c>; exported as <c>PARSL_MEMORY_GB</c>. Default null.</summary>
    public int? MemPerNode { get; set; }

    /// <summary><c>--gpus-per-node</c>. Default null.</summary>
    public int? GpusPerNode { get; set; }

    /// <summary><c>--gres</c>. Default null.</summary>
    public string? Gres { get; set; }

    /// <summary>Reads the job id from sbatch's output; needs a group named <c>id</c>. Default <c>Submitted batch job (?&lt;id&gt;\S*)</c>.</summary>
    public string RegexJobId { get; set; } = D.RegexJobId;

    /// <summary>Jobs per squeue/sacct call. Default 50.</summary>
    public int StatusBatchSize { get; set; } = D.StatusBatchSize;

    /// <summary>How often the executor asks Slurm for its blocks' states. Default 60 s.</summary>
    public TimeSpan StatusPollingInterval { get; set; } = D.StatusPollingInterval;

    /// <summary><c>--exclusive</c>. Default true.</summary>
    public bool Exclusive { get; set; } = D.Exclusive;

    internal SlurmOptions ToCore() =>
        new(ProviderParts.Opt(Partition), ProviderParts.Opt(Account), ProviderParts.Opt(Qos), ProviderParts.Opt(Constraint),
            ProviderParts.Opt(Clusters), NodesPerBlock, ProviderParts.Opt(CoresPerNode), ProviderParts.Opt(MemPerNode),
            ProviderParts.Opt(GpusPerNode), ProviderParts.Opt(Gres), InitBlocks, MinBlocks, MaxBlocks, Parallelism, Walltime,
            SchedulerOptions ?? "", RegexJobId, WorkerInit ?? "", CmdTimeout, StatusBatchSize, StatusPollingInterval, Exclusive,
            LauncherOr(D.Launcher), BuildChannel());

    internal override IExecutionProvider Build() => new SlurmProvider(ToCore());
}

/// <summary>Blocks are Grid Engine jobs, submitted with <c>qsub</c> (Parsl's <c>GridEngineProvider</c>). Tested
/// against a real Grid Engine cell.</summary>
public sealed class GridEngineProviderOptions : ClusterProviderOptions
{
    private static readonly GridEngineOptions D = GridEngine.defaults;

    /// <summary>Options with Parsl's defaults (walltime 00:10:00).</summary>
    public GridEngineProviderOptions() : base(D.InitBlocks, D.MinBlocks, D.MaxBlocks, D.NodesPerBlock, D.Parallelism, D.Walltime, D.CmdTimeout) { }

    /// <summary><c>-q</c>: one queue, as <c>all.q</c>. Default null.</summary>
    public string? Queue { get; set; }

    internal GridEngineOptions ToCore() =>
        new(NodesPerBlock, InitBlocks, MinBlocks, MaxBlocks, Parallelism, Walltime, SchedulerOptions ?? "", WorkerInit ?? "",
            ProviderParts.Opt(Queue), LauncherOr(D.Launcher), CmdTimeout, BuildChannel());

    internal override IExecutionProvider Build() => new GridEngineProvider(ToCore());
}

/// <summary>Blocks are PBS Pro jobs (Parsl's <c>PBSProProvider</c>). Script rendering and output parsing are tested
/// on samples; no PBS server installs on Debian.</summary>
public sealed class PBSProProviderOptions : ClusterProviderOptions
{
    private static readonly PbsProOptions D = PbsPro.defaults;

    /// <summary>Options with Parsl's defaults (walltime 00:20:00, 1 CPU per node).</summary>
    public PBSProProviderOptions() : base(D.InitBlocks, D.MinBlocks, D.MaxBlocks, D.NodesPerBlock, D.Parallelism, D.Walltime, D.CmdTimeout) { }

    /// <summary><c>-A</c>. Default null.</summary>
    public string? Account { get; set; }

    /// <summary><c>-q</c>. Default null.</summary>
    public string? Queue { get; set; }

    /// <summary>Appended to <c>select=N:ncpus=C</c>, as <c>ngpus=4</c>. Default empty.</summary>
    public string SelectOptions { get; set; } = "";

    /// <summary><c>ncpus</c> per node. Default 1; at least 1.</summary>
    public int CpusPerNode { get; set; } = D.CpusPerNode;

    internal PbsProOptions ToCore() =>
        new(ProviderParts.Opt(Account), ProviderParts.Opt(Queue), SchedulerOptions ?? "", SelectOptions ?? "", WorkerInit ?? "",
            NodesPerBlock, CpusPerNode, InitBlocks, MinBlocks, MaxBlocks, Parallelism, LauncherOr(D.Launcher), Walltime, CmdTimeout,
            BuildChannel());

    internal override IExecutionProvider Build() => new PBSProProvider(ToCore());
}

/// <summary>Blocks are Torque jobs (Parsl's <c>TorqueProvider</c>; default launcher <see cref="AprunLauncherOptions"/>).
/// Tested on samples; no Torque server installs on Debian.</summary>
public sealed class TorqueProviderOptions : ClusterProviderOptions
{
    private static readonly TorqueOptions D = Torque.defaults;

    /// <summary>Options with Parsl's defaults.</summary>
    public TorqueProviderOptions() : base(D.InitBlocks, D.MinBlocks, D.MaxBlocks, D.NodesPerBlock, D.Parallelism, D.Walltime, D.CmdTimeout) { }

    /// <summary><c>-A</c>. Default null.</summary>
    public string? Account { get; set; }

    /// <summary><c>-q</c>. Default null.</summary>
    public string? Queue { get; set; }

    internal TorqueOptions ToCore() =>
        new(ProviderParts.Opt(Account), ProviderParts.Opt(Queue), SchedulerOptions ?? "", WorkerInit ?? "", NodesPerBlock,
            InitBlocks, MinBlocks, MaxBlocks, Parallelism, LauncherOr(D.Launcher), Walltime, CmdTimeout, BuildChannel());

    internal override IExecutionProvider Build() => new TorqueProvider(ToCore());
}

/// <summary>Blocks are HTCondor jobs (Parsl's <c>CondorProvider</c>). Tested on samples; no Condor pool runs here.</summary>
public sealed class CondorProviderOptions : ClusterProviderOptions
{
    private static readonly CondorOptions D = Condor.defaults;

    /// <summary>Options with Parsl's defaults.</summary>
    public CondorProviderOptions() : base(D.InitBlocks, D.MinBlocks, D.MaxBlocks, D.NodesPerBlock, D.Parallelism, D.Walltime, D.CmdTimeout) { }

    /// <summary><c>request_cpus</c>. Default null.</summary>
    public int? CoresPerSlot { get; set; }

    /// <summary><c>request_memory</c> in GB. Default null.</summary>
    public double? MemPerSlot { get; set; }

    /// <summary>Environment variables of the job. Default empty.</summary>
    public IDictionary<string, string> Environment { get; } = new Dictionary<string, string>();

    /// <summary><c>+ProjectName</c>. Default empty.</summary>
    public string Project { get; set; } = "";

    /// <summary>Files HTCondor copies to the job. Default empty.</summary>
    public IList<string> TransferInputFiles { get; } = new List<string>();

    /// <summary><c>requirements</c>. Default empty.</summary>
    public string Requirements { get; set; } = "";

    /// <summary>Jobs per <c>condor_q</c>/<c>condor_rm</c> call. Default 100.</summary>
    public int CmdChunkSize { get; set; } = D.CmdChunkSize;

    internal CondorOptions ToCore() =>
        new(NodesPerBlock, ProviderParts.Opt(CoresPerSlot), ProviderParts.Opt(MemPerSlot), InitBlocks, MinBlocks, MaxBlocks,
            Parallelism, ProviderParts.Map(Environment), Project ?? "", SchedulerOptions ?? "", ListModule.OfSeq(TransferInputFiles),
            Walltime, WorkerInit ?? "", LauncherOr(D.Launcher), Requirements ?? "", CmdTimeout, CmdChunkSize, BuildChannel());

    internal override IExecutionProvider Build() => new CondorProvider(ToCore());
}

/// <summary>Blocks are LSF jobs, submitted with <c>bsub</c> (Parsl's <c>LSFProvider</c>). Tested on samples; no LSF
/// installs on Debian.</summary>
public sealed class LSFProviderOptions : ClusterProviderOptions
{
    private static readonly LsfOptions D = Lsf.defaults;

    /// <summary>Options with Parsl's defaults (request by nodes).</summary>
    public LSFProviderOptions() : base(D.InitBlocks, D.MinBlocks, D.MaxBlocks, D.NodesPerBlock, D.Parallelism, D.Walltime, D.CmdTimeout) { }

    /// <summary>Cores per block, used when <see cref="RequestByNodes"/> is false. Default null.</summary>
    public int? CoresPerBlock { get; set; }

    /// <summary>Cores per node. Default null.</summary>
    public int? CoresPerNode { get; set; }

    /// <summary><c>-P</c>. Default null.</summary>
    public string? Project { get; set; }

    /// <summary><c>-q</c>. Default null.</summary>
    public string? Queue { get; set; }

    /// <summary>Submit with <c>bsub &lt; script</c> instead of <c>bsub script</c>. Default false.</summary>
    public bool BsubRedirection { get; set; } = D.BsubRedirection;

    /// <summary>Request whole nodes (<c>-nnodes</c>); false requests cores. Default true.</summary>
    public bool RequestByNodes { get; set; } = D.RequestByNodes;

    internal LsfOptions ToCore() =>
        new(NodesPerBlock, ProviderParts.Opt(CoresPerBlock), ProviderParts.Opt(CoresPerNode), InitBlocks, MinBlocks, MaxBlocks,
            Parallelism, Walltime, SchedulerOptions ?? "", WorkerInit ?? "", ProviderParts.Opt(Project), ProviderParts.Opt(Queue),
            CmdTimeout, BsubRedirection, RequestByNodes, LauncherOr(D.Launcher), BuildChannel());

    internal override IExecutionProvider Build() => new LSFProvider(ToCore());
}

/// <summary>Blocks are Kubernetes pods (Parsl's <c>KubernetesProvider</c>). Tested against a fake API server
/// (<c>FakeKubernetesApi</c>), not a real cluster.</summary>
public sealed class KubernetesProviderOptions : ProviderOptions
{
    private static readonly KubernetesOptions D = Parsl.Providers.Kubernetes.defaults("image");

    /// <summary>The container image, with bash and the worker pool. Required.</summary>
    public string Image { get; set; } = "";

    /// <summary>The namespace. Default <c>default</c>.</summary>
    public string Namespace { get; set; } = D.Namespace;

    /// <summary>Pods per block. Default 1.</summary>
    public int NodesPerBlock { get; set; } = D.NodesPerBlock;

    /// <summary>Pods started with the executor. Default 4.</summary>
    public int InitBlocks { get; set; } = D.InitBlocks;

    /// <summary>Default 0.</summary>
    public int MinBlocks { get; set; } = D.MinBlocks;

    /// <summary>Default 10.</summary>
    public int MaxBlocks { get; set; } = D.MaxBlocks;

    /// <summary>From 0 to 1. Default 1.</summary>
    public double Parallelism { get; set; } = D.Parallelism;

    /// <summary>The pod's CPU limit. Default 2.</summary>
    public double MaxCpu { get; set; } = D.MaxCpu;

    /// <summary>The pod's memory limit. Default <c>500Mi</c>.</summary>
    public string MaxMem { get; set; } = D.MaxMem;

    /// <summary>The pod's CPU request. Default 1.</summary>
    public double InitCpu { get; set; } = D.InitCpu;

    /// <summary>The pod's memory request. Default <c>250Mi</c>.</summary>
    public string InitMem { get; set; } = D.InitMem;

    /// <summary>Extra resource requests (<c>nvidia.com/gpu</c>: <c>1</c>). Default empty.</summary>
    public IDictionary<string, string> ExtraRequests { get; } = new Dictionary<string, string>();

    /// <summary>Extra resource limits. Default empty.</summary>
    public IDictionary<string, string> ExtraLimits { get; } = new Dictionary<string, string>();

    /// <summary>Shell lines run before the worker pool. Default empty.</summary>
    public string WorkerInit { get; set; } = "";

    /// <summary>The pods' name prefix. Default null: <c>parsl-block</c>.</summary>
    public string? PodName { get; set; }

    /// <summary>Run as this user id (with <see cref="GroupId"/>). Default null.</summary>
    public int? UserId { get; set; }

    /// <summary>Run as this group id (with <see cref="UserId"/>). Default null.</summary>
    public int? GroupId { get; set; }

    /// <summary><c>runAsNonRoot</c>. Default false.</summary>
    public bool RunAsNonRoot { get; set; }

    /// <summary>An image pull secret. Default null.</summary>
    public string? Secret { get; set; }

    /// <summary>Persistent volume claims mounted in each pod: claim name → mount path. Default empty.</summary>
    public IDictionary<string, string> PersistentVolumes { get; } = new Dictionary<string, string>();

    /// <summary>The pods' service account. Default null.</summary>
    public string? ServiceAccountName { get; set; }

    /// <summary>Pod annotations. Default empty.</summary>
    public IDictionary<string, string> Annotations { get; } = new Dictionary<string, string>();

    /// <summary>The API server's URL. Default null: from the kube config or the in-cluster service account.</summary>
    public string? ApiServer { get; set; }

    /// <summary>A bearer token for <see cref="ApiServer"/>. Default null.</summary>
    public string? AccessToken { get; set; }

    /// <summary>How the worker pool starts in the pod. Default null: <see cref="SingleNodeLauncherOptions"/>.</summary>
    public LauncherOptions? Launcher { get; set; }

    internal KubernetesOptions ToCore() =>
        new(Image, Namespace, NodesPerBlock, InitBlocks, MinBlocks, MaxBlocks, Parallelism, MaxCpu, MaxMem, InitCpu, InitMem,
            ProviderParts.Map(ExtraRequests), ProviderParts.Map(ExtraLimits), WorkerInit ?? "", ProviderParts.Opt(PodName),
            ProviderParts.Opt(UserId), ProviderParts.Opt(GroupId), RunAsNonRoot, ProviderParts.Opt(Secret),
            ListModule.OfSeq(PersistentVolumes.Select(kv => Tuple.Create(kv.Key, kv.Value))), ProviderParts.Opt(ServiceAccountName),
            ProviderParts.Map(Annotations), ProviderParts.Opt(ApiServer), ProviderParts.Opt(AccessToken), Launcher?.Build() ?? D.Launcher);

    internal override IExecutionProvider Build() => new KubernetesProvider(ToCore());
}
