using Parsl.Core;

namespace Parsl;

/// <summary>A loaded DataFlowKernel, for C#: it makes apps, and runs their tasks on the configured executors.
/// Load it with <see cref="LoadAsync(DfkOptions, CancellationToken)"/> and dispose it with <c>await using</c>, which shuts it down as
/// <see cref="DfkOptions.ExitMode"/> says and stops every thread and process it started.</summary>
/// <example><code>
/// await using var dfk = await Dfk.LoadAsync(new DfkOptions { Executors = { new ThreadPoolExecutorOptions { MaxThreads = 4 } } });
/// var square = dfk.App((int x) => x * x);
/// AppFuture&lt;int&gt; a = square.Invoke(3);
/// Console.WriteLine(await square.Invoke(a)); // 81
/// </code></example>
public sealed partial class Dfk : IAsyncDisposable
{
    private readonly DataFlowKernel kernel;

    private Dfk(DataFlowKernel kernel) => this.kernel = kernel;

    /// <summary>Validates the options once, creates the numbered run directory and starts the executors.</summary>
    /// <param name="options">The options; read once, here.</param>
    /// <param name="cancellationToken">Cancels loading before it starts.</param>
    /// <returns>The loaded kernel.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    /// <exception cref="ConfigurationError">An option is invalid; <see cref="ConfigurationError.Field"/> names it
    /// (<c>DfkOptions.Retries</c>, <c>ThreadPoolExecutorOptions.MaxThreads</c>, ...) and the message says how to fix it.</exception>
    public static async Task<Dfk> LoadAsync(DfkOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        cancellationToken.ThrowIfCancellationRequested();
        var config = options.ToConfig();
        // Starting executors may block (processes, sockets), so not on the caller's thread.
        var kernel = await Task.Run(() => DataFlowKernel.Load(config), cancellationToken).ConfigureAwait(false);
        return new Dfk(kernel);
    }

    /// <summary>Loads a kernel with the default options (one ThreadPoolExecutor with 2 threads, run directory <c>runinfo</c>).</summary>
    /// <param name="cancellationToken">Cancels loading before it starts.</param>
    /// <returns>The loaded kernel.</returns>
    public static Task<Dfk> LoadAsync(CancellationToken cancellationToken = default) =>
        LoadAsync(new DfkOptions(), cancellationToken);

    /// <summary>This run's directory (<c>runinfo/NNN</c>): <c>parsl.log</c> and automatic stdout/stderr files live here.</summary>
    public string RunDir => kernel.RunDir;

    /// <summary>The executors' labels.</summary>
    public IReadOnlyList<string> ExecutorLabels => kernel.ExecutorLabels.ToArray();

    /// <summary>How many tasks ended in each final state so far.</summary>
    public IReadOnlyDictionary<States, int> FinalCounts =>
        kernel.FinalCounts.ToDictionary(kv => AppFutureExtensions.ToStates(kv.Key), kv => kv.Value);

    /// <summary>Whether the kernel was shut down (no app can be called any more).</summary>
    public bool IsClosed => kernel.IsClosed;

    /// <summary>Waits until every task submitted so far is final (Parsl's <c>wait_for_current_tasks</c>).</summary>
    /// <param name="cancellationToken">Stops waiting (the tasks go on).</param>
    /// <returns>A task that completes when the tasks are final.</returns>
    public Task WaitForCurrentTasksAsync(CancellationToken cancellationToken = default) =>
        cancellationToken.IsCancellationRequested
            ? Task.FromCanceled(cancellationToken)
            : kernel.WaitForCurrentTasksAsync().WaitAsync(cancellationToken);

    /// <summary>Shuts the kernel down as <see cref="DfkOptions.ExitMode"/> says (Parsl's <c>cleanup</c>).</summary>
    /// <param name="cancellationToken">Stops waiting (the shutdown goes on).</param>
    /// <returns>A task that completes when every executor, thread and process has stopped.</returns>
    /// <exception cref="NoDataFlowKernelError">The kernel was already shut down.</exception>
    public Task CleanupAsync(CancellationToken cancellationToken = default) =>
        kernel.CleanupAsync(null).WaitAsync(cancellationToken);

    /// <summary>Shuts the kernel down with this exit mode (Parsl's <c>cleanup</c>).</summary>
    /// <param name="mode">What to do with unfinished tasks.</param>
    /// <param name="cancellationToken">Stops waiting (the shutdown goes on).</param>
    /// <returns>A task that completes when every executor, thread and process has stopped.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="mode"/> is not a defined value.</exception>
    /// <exception cref="NoDataFlowKernelError">The kernel was already shut down.</exception>
    public Task CleanupAsync(KernelExitMode mode, CancellationToken cancellationToken = default)
    {
        if (!Enum.IsDefined(mode)) throw new ArgumentOutOfRangeException(nameof(mode), mode, "Use Cleanup, Wait or Skip.");
        return kernel.CleanupAsync(Microsoft.FSharp.Core.FSharpOption<ExitMode>.Some(ConfigParts.ExitMode((int)mode))).WaitAsync(cancellationToken);
    }

    /// <summary>Shuts the kernel down as <see cref="DfkOptions.ExitMode"/> says, unless that was done already.</summary>
    /// <returns>A task that completes when every executor, thread and process has stopped.</returns>
    public ValueTask DisposeAsync() => ((IAsyncDisposable)kernel).DisposeAsync();

    /// <inheritdoc/>
    public override string ToString() => $"<Dfk {RunDir}{(IsClosed ? " closed" : "")}>";

    private DataFlowKernel Live =>
        kernel.IsClosed
            ? throw new NoDataFlowKernelError("Cannot create an app: this Dfk was disposed; load a new one with Dfk.LoadAsync")
            : kernel;

    private static T Cast<T>(object? value) => (T)value!;

    private static AppOptions Options(FunctionAppOptions? o) =>
        o is null
            ? AppOptionsModule.defaults
            : AppHandles.Options(o.Name, o.Executors.ToArray(), new Dictionary<string, object>(o.Resources), null, null, o.Walltime, null,
                o.Cache, o.IgnoreForCache.ToArray());

    private static AppOptions ShellOptions(ShellAppOptions? o) =>
        o is null
            ? AppOptionsModule.defaults
            : AppHandles.Options(o.Name, o.Executors.ToArray(), new Dictionary<string, object>(o.Resources),
                o.Stdout?.Spec, o.Stderr?.Spec, o.Walltime, o.Outputs.ToArray(), o.Cache, o.IgnoreForCache.ToArray());
}
