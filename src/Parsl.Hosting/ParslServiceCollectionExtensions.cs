using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Parsl;
using Parsl.Hosting;

// The conventional namespace of service registration methods, so AddParsl shows up beside AddLogging and friends.
namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers Parsl.NET with a .NET host.</summary>
public static class ParslServiceCollectionExtensions
{
    /// <summary>Adds a DataFlowKernel that starts and stops with the host: <see cref="ParslKernel"/> (inject it
    /// anywhere) and <see cref="Dfk"/> itself (resolve it once the host has started). The options are built when
    /// the host starts and validated by <see cref="Dfk.LoadAsync(DfkOptions, CancellationToken)"/>.</summary>
    /// <param name="services">The host's services.</param>
    /// <param name="configure">Sets the options, which start from the defaults.</param>
    public static IServiceCollection AddParsl(this IServiceCollection services, Action<DfkOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        return services.AddParsl(_ =>
        {
            var options = new DfkOptions();
            configure(options);
            return options;
        });
    }

    /// <summary>Adds a DataFlowKernel with the default options (one thread-pool executor with 2 threads) that starts
    /// and stops with the host.</summary>
    /// <param name="services">The host's services.</param>
    public static IServiceCollection AddParsl(this IServiceCollection services) => services.AddParsl(_ => new DfkOptions());

    /// <summary>Adds a DataFlowKernel that starts and stops with the host, with options made from the host's
    /// services (configuration, environment) when the host starts.</summary>
    /// <param name="services">The host's services.</param>
    /// <param name="options">Makes the options.</param>
    public static IServiceCollection AddParsl(this IServiceCollection services, Func<IServiceProvider, DfkOptions> options)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(options);
        if (services.Any(d => d.ServiceType == typeof(ParslKernel)))
            throw new InvalidOperationException("AddParsl was called twice; one host runs one DataFlowKernel");
        services.AddSingleton(new ParslKernel());
        services.AddSingleton<IHostedService>(sp =>
            new ParslHostedService(sp.GetRequiredService<ParslKernel>(), () => options(sp)));
        services.TryAddSingleton(sp => sp.GetRequiredService<ParslKernel>().Dfk);
        return services;
    }
}
