using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using Parsl.Providers;

namespace Parsl;

/// <summary>The conversions and checks <see cref="WorkQueueExecutorOptions"/> and <see cref="TaskVineExecutorOptions"/>
/// share (the same fields, the same F# option types underneath).</summary>
internal static class WorkerLinkOptions
{
    /// <summary>The <c>Strategy</c> problem, if it is not a <see cref="ScalingStrategy"/>, named under
    /// <paramref name="owner"/>.</summary>
    internal static IEnumerable<ConfigurationError> CheckStrategy(string owner, ScalingStrategy strategy)
    {
        if (!Enum.IsDefined(strategy))
            yield return new ConfigurationError(owner + ".Strategy",
                $"{(int)strategy} is not a ScalingStrategy; use None, Simple or HtexAutoScale");
    }

    internal static Parsl.Jobs.StrategyKind Strategy(ScalingStrategy strategy) => strategy switch
    {
        ScalingStrategy.None => Parsl.Jobs.StrategyKind.NoScaling,
        ScalingStrategy.HtexAutoScale => Parsl.Jobs.StrategyKind.HtexAutoScale,
        _ => Parsl.Jobs.StrategyKind.Simple,
    };

    internal static FSharpOption<string> Optional(string? value) =>
        value is null ? FSharpOption<string>.None : FSharpOption<string>.Some(value);

    internal static FSharpOption<IExecutionProvider> Provider(ProviderOptions? provider) =>
        provider is null ? FSharpOption<IExecutionProvider>.None : FSharpOption<IExecutionProvider>.Some(provider.Build());

    internal static FSharpMap<string, string> Env(IDictionary<string, string> env) =>
        MapModule.OfSeq(env.Select(kv => Tuple.Create(kv.Key, kv.Value)));
}
