using Parsl.Monitoring;

namespace Parsl;

public sealed partial class Dfk
{
    private TaskMonitor? monitor;

    /// <summary>The kernel's monitoring (events, counts, spans), or null when <see cref="DfkOptions.Monitoring"/> is not set.</summary>
    public TaskMonitor? Monitoring =>
        monitor ??= MonitoringParts.Handle(kernel) is { } h ? Interlocked.CompareExchange(ref monitor, new TaskMonitor(h), null) ?? monitor : null;
}
