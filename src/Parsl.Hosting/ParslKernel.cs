namespace Parsl.Hosting;

/// <summary>The host's DataFlowKernel. It is loaded when the host starts (<see cref="Microsoft.Extensions.Hosting.IHostedService.StartAsync"/>)
/// and cleaned up, with its <see cref="DfkOptions.ExitMode"/>, when the host stops, so no task or worker outlives
/// the host. Inject it anywhere, constructors of other hosted services included: <see cref="GetAsync"/> waits until
/// the kernel is loaded; <see cref="Dfk"/> is there once the host has started.</summary>
public sealed class ParslKernel
{
    private readonly TaskCompletionSource<Dfk> loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal ParslKernel() { }

    /// <summary>The kernel. Throws <see cref="InvalidOperationException"/> before the host has started it (resolve it in
    /// <c>ExecuteAsync</c>, a request handler, or after <c>host.StartAsync()</c>), and after it failed to load.</summary>
    public Dfk Dfk =>
        loaded.Task.IsCompletedSuccessfully
            ? loaded.Task.Result
            : throw new InvalidOperationException(
                loaded.Task.IsFaulted
                    ? "Parsl's DataFlowKernel failed to load when the host started: " + loaded.Task.Exception!.InnerException!.Message
                    : "Parsl's DataFlowKernel is loaded when the host starts; use it once the host has started, or await ParslKernel.GetAsync()");

    /// <summary>The kernel, once the host has loaded it. Fails with the load's error (for example a
    /// <see cref="ConfigurationError"/>) if it could not be loaded.</summary>
    public Task<Dfk> GetAsync(CancellationToken cancellationToken = default) => loaded.Task.WaitAsync(cancellationToken);

    internal void Loaded(Dfk dfk) => loaded.TrySetResult(dfk);

    internal void Failed(Exception e) => loaded.TrySetException(e);
}
