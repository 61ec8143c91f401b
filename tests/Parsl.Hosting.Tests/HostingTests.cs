using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Parsl.Hosting;

namespace Parsl.Hosting.Tests;

/// <summary><c>services.AddParsl(...)</c>: the kernel's lifetime is the host's.</summary>
public class HostingTests
{
    private static string TempRunDir() =>
        Path.Combine(Path.GetTempPath(), "parsl-tests", Guid.NewGuid().ToString("N"));

    private static IHost Build(Action<IServiceCollection> services)
    {
        var builder = Host.CreateApplicationBuilder();
        services(builder.Services);
        return builder.Build();
    }

    /// <summary>Waits for a task with a generous limit, so a broken feature fails instead of hanging CI.</summary>
    private static Task<T> Within<T>(Task<T> task) => task.WaitAsync(TimeSpan.FromSeconds(60));

    [Fact]
    public async Task The_kernel_is_loaded_when_the_host_starts_and_cleaned_up_when_it_stops()
    {
        var runDir = TempRunDir();
        using var host = Build(s => s.AddParsl(o => { o.RunDir = runDir; o.Executors.Add(new ThreadPoolExecutorOptions { Label = "pool", MaxThreads = 2 }); }));
        var kernel = host.Services.GetRequiredService<ParslKernel>();
        Assert.Throws<InvalidOperationException>(() => kernel.Dfk);

        await host.StartAsync();
        var dfk = host.Services.GetRequiredService<Dfk>();
        Assert.Same(kernel.Dfk, dfk);
        Assert.Equal(new[] { "pool" }, dfk.ExecutorLabels);
        Assert.StartsWith(runDir, dfk.RunDir);
        var square = dfk.App((int x) => x * x);
        Assert.Equal(81, await Within(square.Invoke(square.Invoke(3)).Task));

        await host.StopAsync();
        Assert.True(dfk.IsClosed);
        Assert.Throws<NoDataFlowKernelError>(() => square.Invoke(2));
    }

    /// <summary>A hosted service that takes the kernel in its constructor (constructed before any host start) and
    /// waits for it.</summary>
    private sealed class Worker(ParslKernel kernel) : BackgroundService
    {
        public TaskCompletionSource<int> Result { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            var dfk = await kernel.GetAsync(stoppingToken);
            var add = dfk.App((int a, int b) => a + b);
            Result.SetResult(await add.Invoke(40, 2));
        }
    }

    [Fact]
    public async Task A_hosted_service_gets_the_kernel_through_its_constructor_and_awaits_it()
    {
        var runDir = TempRunDir();
        using var host = Build(s =>
        {
            s.AddParsl(o => o.RunDir = runDir);
            s.AddSingleton<Worker>();
            s.AddHostedService(sp => sp.GetRequiredService<Worker>());
        });
        await host.StartAsync();
        Assert.Equal(42, await Within(host.Services.GetRequiredService<Worker>().Result.Task));
        await host.StopAsync();
    }

    [Fact]
    public async Task Bad_options_fail_the_hosts_start_with_the_field_named()
    {
        using var host = Build(s => s.AddParsl(o =>
        {
            o.RunDir = TempRunDir();
            o.Executors.Add(new ThreadPoolExecutorOptions { MaxThreads = 0 });
        }));
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => host.StartAsync());
        Assert.Equal("ThreadPoolExecutorOptions.MaxThreads", e.Field);
        var kernel = host.Services.GetRequiredService<ParslKernel>();
        await Assert.ThrowsAsync<ConfigurationError>(() => kernel.GetAsync());
        Assert.Contains("failed to load", Assert.Throws<InvalidOperationException>(() => kernel.Dfk).Message);
    }

    [Fact]
    public void AddParsl_twice_is_refused()
    {
        var services = new ServiceCollection();
        services.AddParsl();
        Assert.Throws<InvalidOperationException>(() => services.AddParsl());
    }

    [Fact]
    public async Task Options_can_come_from_the_hosts_services()
    {
        var runDir = TempRunDir();
        using var host = Build(s =>
        {
            s.AddSingleton(new ThreadPoolExecutorOptions { Label = "from-services", MaxThreads = 1 });
            s.AddParsl(sp => new DfkOptions { RunDir = runDir, Executors = { sp.GetRequiredService<ThreadPoolExecutorOptions>() } });
        });
        await host.StartAsync();
        Assert.Equal(new[] { "from-services" }, host.Services.GetRequiredService<Dfk>().ExecutorLabels);
        await host.StopAsync();
    }
}
