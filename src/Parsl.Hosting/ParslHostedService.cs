using Microsoft.Extensions.Hosting;

namespace Parsl.Hosting;

/// <summary>Ties the kernel's lifetime to the host's: loads it in <see cref="StartAsync"/> (a bad option fails the host's
/// start with <see cref="ConfigurationError"/>) and cleans it up in <see cref="StopAsync"/>.</summary>
internal sealed class ParslHostedService(ParslKernel kernel, Func<DfkOptions> options) : IHostedService
{
    private Dfk? dfk;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        try
        {
            dfk = await Dfk.LoadAsync(options(), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            kernel.Failed(e);
            throw;
        }
        kernel.Loaded(dfk);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (dfk is null) return;
        // The options' exit mode decides how running tasks end; if the host's shutdown timeout passes first, the rest
        // is skipped, so no future is left hanging and no worker outlives the host.
        try
        {
            await dfk.CleanupAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            await dfk.CleanupAsync(KernelExitMode.Skip, CancellationToken.None).ConfigureAwait(false);
        }
        catch (NoDataFlowKernelError)
        {
            // Cleaned up already by the application itself.
        }
    }
}
