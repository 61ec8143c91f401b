using Parsl.Providers;

namespace Parsl;

/// <summary>How a block's worker pool is placed on the block's nodes (Parsl's launchers). Each launcher has its own
/// options class; set one as a provider's <c>Launcher</c>. A launcher is a pure function from (command, tasks per
/// node, nodes per block) to the line the batch script runs.</summary>
public abstract class LauncherOptions
{
    private protected LauncherOptions() { }

    /// <summary>The core's launcher for these options.</summary>
    internal abstract ILauncher Build();

    /// <summary>The launch line for <paramref name="command"/>: what the block's script will run.</summary>
    /// <param name="command">The worker pool's command line.</param>
    /// <param name="tasksPerNode">Copies of the command per node.</param>
    /// <param name="nodesPerBlock">Nodes in the block.</param>
    /// <returns>The launch line (often several lines of shell).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="command"/> is null.</exception>
    public string Wrap(string command, int tasksPerNode, int nodesPerBlock)
    {
        ArgumentNullException.ThrowIfNull(command);
        return Build().Wrap(command, tasksPerNode, nodesPerBlock);
    }

    /// <inheritdoc/>
    public override string ToString() => Build().Name;
}

/// <summary>Runs the command once, as it is (Parsl's <c>SimpleLauncher</c>).</summary>
public sealed class SimpleLauncherOptions : LauncherOptions
{
    internal override ILauncher Build() => BasicLaunchers.simple;
}

/// <summary>Runs tasks-per-node × nodes-per-block copies on the block's first node and waits for them all (Parsl's
/// <c>SingleNodeLauncher</c>, the default of most providers).</summary>
public sealed class SingleNodeLauncherOptions : LauncherOptions
{
    /// <summary>The block fails if any copy fails (Parsl's <c>fail_on_any</c>). Default false: it fails only if all do.</summary>
    public bool FailOnAny { get; set; }

    internal override ILauncher Build() => BasicLaunchers.singleNodeWith(FailOnAny);
}

/// <summary>Starts the copies with one <c>srun</c>, inside a Slurm allocation (Parsl's <c>SrunLauncher</c>).</summary>
public sealed class SrunLauncherOptions : LauncherOptions
{
    /// <summary>Extra <c>srun</c> arguments. Default empty.</summary>
    public string Overrides { get; set; } = "";

    /// <summary>Echo progress to the job's output. Default true.</summary>
    public bool Debug { get; set; } = true;

    internal override ILauncher Build() => new SrunLauncher(Overrides ?? "", Debug);
}

/// <summary>MPI applications under Slurm: one <c>srun</c> per node group (Parsl's <c>SrunMPILauncher</c>).</summary>
public sealed class SrunMPILauncherOptions : LauncherOptions
{
    /// <summary>Extra <c>srun</c> arguments. Default empty.</summary>
    public string Overrides { get; set; } = "";

    /// <summary>Echo progress to the job's output. Default true.</summary>
    public bool Debug { get; set; } = true;

    internal override ILauncher Build() => new SrunMPILauncher(Overrides ?? "", Debug);
}

/// <summary>Cray's <c>aprun</c> (Parsl's <c>AprunLauncher</c>, the Torque provider's default).</summary>
public sealed class AprunLauncherOptions : LauncherOptions
{
    /// <summary>Extra <c>aprun</c> arguments. Default empty.</summary>
    public string Overrides { get; set; } = "";

    /// <summary>Echo progress to the job's output. Default true.</summary>
    public bool Debug { get; set; } = true;

    internal override ILauncher Build() => new AprunLauncher(Overrides ?? "", Debug);
}

/// <summary>IBM's <c>jsrun</c> on LSF machines (Parsl's <c>JsrunLauncher</c>).</summary>
public sealed class JsrunLauncherOptions : LauncherOptions
{
    /// <summary>Extra <c>jsrun</c> arguments. Default empty.</summary>
    public string Overrides { get; set; } = "";

    /// <summary>Echo progress to the job's output. Default true.</summary>
    public bool Debug { get; set; } = true;

    internal override ILauncher Build() => new JsrunLauncher(Overrides ?? "", Debug);
}

/// <summary><c>mpiexec</c> with a host file from the scheduler (Parsl's <c>MpiExecLauncher</c>).</summary>
public sealed class MpiExecLauncherOptions : LauncherOptions
{
    /// <summary>The binding flag. Default <c>--bind-to</c>.</summary>
    public string BindCmd { get; set; } = "--bind-to";

    /// <summary>Extra <c>mpiexec</c> arguments. Default empty.</summary>
    public string Overrides { get; set; } = "";

    /// <summary>Echo progress to the job's output. Default true.</summary>
    public bool Debug { get; set; } = true;

    internal override ILauncher Build() => new MpiExecLauncher(BindCmd ?? "--bind-to", Overrides ?? "", Debug);
}

/// <summary>Open MPI's <c>mpirun</c> (Parsl's <c>MpiRunLauncher</c>).</summary>
public sealed class MpiRunLauncherOptions : LauncherOptions
{
    /// <summary>The shell that runs each copy. Default <c>/bin/bash</c>.</summary>
    public string BashLocation { get; set; } = "/bin/bash";

    /// <summary>Extra <c>mpirun</c> arguments. Default empty.</summary>
    public string Overrides { get; set; } = "";

    /// <summary>Echo progress to the job's output. Default true.</summary>
    public bool Debug { get; set; } = true;

    internal override ILauncher Build() => new MpiRunLauncher(BashLocation ?? "/bin/bash", Overrides ?? "", Debug);
}

/// <summary>GNU Parallel over the nodes of the allocation (Parsl's <c>GnuParallelLauncher</c>).</summary>
public sealed class GnuParallelLauncherOptions : LauncherOptions
{
    /// <summary>Echo progress to the job's output. Default true.</summary>
    public bool Debug { get; set; } = true;

    internal override ILauncher Build() => new GnuParallelLauncher(Debug);
}

/// <summary>Puts a prefix before the command, as <c>docker run --rm image</c> or <c>time</c> (Parsl's <c>WrappedLauncher</c>).</summary>
public sealed class WrappedLauncherOptions : LauncherOptions
{
    /// <summary>What goes before the command. Default empty.</summary>
    public string Prepend { get; set; } = "";

    internal override ILauncher Build() => new WrappedLauncher(Prepend ?? "");
}
