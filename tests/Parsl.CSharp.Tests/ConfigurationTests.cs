using Microsoft.Extensions.Configuration;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>Options from appsettings.json and any IConfiguration: executors, providers, launchers and the SSH channel
/// bind by a Type key, and what does not bind is an error naming its configuration path.</summary>
public class ConfigurationTests
{
    private static IConfiguration Json(string file) =>
        new ConfigurationBuilder().SetBasePath(AppContext.BaseDirectory).AddJsonFile(file, optional: false).Build();

    private static IConfiguration Memory(params (string Key, string Value)[] values) =>
        new ConfigurationBuilder().AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>(v.Key, v.Value))).Build();

    [Fact]
    public void Appsettings_json_binds_every_executor_provider_launcher_and_channel()
    {
        var o = DfkOptions.FromConfiguration(Json("appsettings.json").GetSection("Parsl"));
        Assert.Equal(2, o.Retries);
        Assert.Equal(KernelExitMode.Wait, o.ExitMode);
        Assert.Equal(DependencyResolution.Deep, o.DependencyResolver);
        Assert.Equal(Microsoft.Extensions.Logging.LogLevel.Debug, o.LogLevel);
        Assert.Equal(CheckpointPolicy.TaskExit, o.CheckpointMode);
        Assert.Equal(["runinfo/000/checkpoint"], o.CheckpointFiles!);
        Assert.Equal(1000, o.MaxTasksInFlight);
        Assert.Equal([StagingScheme.File, StagingScheme.Zip], o.Staging.Select(s => s.Scheme));
        Assert.Equal(StagingPlacement.InTask, o.Staging[1].Placement);
        Assert.Equal(3, o.Executors.Count);

        var cpu = Assert.IsType<ThreadPoolExecutorOptions>(o.Executors[0]);
        Assert.Equal(("cpu", 3), (cpu.Label, cpu.MaxThreads));

        var htex = Assert.IsType<HighThroughputExecutorOptions>(o.Executors[1]);
        Assert.Equal("cluster", htex.Label);
        Assert.Equal(4, htex.MaxWorkersPerNode);
        Assert.Equal(TimeSpan.FromSeconds(5), htex.HeartbeatPeriod);
        Assert.Equal(TimeSpan.FromHours(1), htex.DrainPeriod);
        Assert.Equal(ScalingStrategy.HtexAutoScale, htex.Strategy);
        Assert.Equal(3, htex.BlockErrorWindow);
        Assert.Equal(["0", "1"], htex.AvailableAccelerators);
        var slurm = Assert.IsType<SlurmProviderOptions>(htex.Provider);
        Assert.Equal(("debug", 4, "01:00:00", "module load dotnet"), (slurm.Partition, slurm.MaxBlocks, slurm.Walltime, slurm.WorkerInit));
        Assert.Equal("--mpi=pmix", Assert.IsType<SrunLauncherOptions>(slurm.Launcher).Overrides);
        Assert.Equal("login.cluster.org", slurm.Channel!.Host);
        Assert.Equal("SHA256:HzRYtJihO+TN1SWvAgvqgRdZAkiS2Dl0THAaISpRhL0", slurm.Channel.HostKeyFingerprint);
        // Untouched values keep their defaults.
        Assert.Equal(new SlurmProviderOptions().CmdTimeout, slurm.CmdTimeout);
        Assert.Equal(22, slurm.Channel.Port);

        var k8s = Assert.IsType<KubernetesProviderOptions>(Assert.IsType<HighThroughputExecutorOptions>(o.Executors[2]).Provider);
        Assert.Equal("parsl/worker:1", k8s.Image);
        Assert.Equal("a", k8s.Annotations["team"]);
    }

    [Fact]
    public void What_does_not_bind_is_an_error_naming_its_configuration_path()
    {
        var e = Assert.Throws<ConfigurationError>(() => DfkOptions.FromConfiguration(Json("appsettings.bad.json").GetSection("Parsl")));
        // Every problem is reported at once; the first (in the configuration's key order) is the Field.
        Assert.Equal("Parsl:Executors:0:Provider:Type", e.Field);
        Assert.Contains("Parsl:Retries: 'two' is not a whole number", e.Message);
        Assert.StartsWith("Parsl:Executors:0:Provider:Type: 'Slurmm' is not one of Local, Slurm", e.Message);
        Assert.Contains("Parsl:Executors:1:Type: is missing", e.Message);
        Assert.Contains("Parsl:Executors:2:MaxThreds: ThreadPoolExecutorOptions has no property 'MaxThreds'", e.Message);
        Assert.Contains("MaxThreads", e.Message);
    }

    [Theory]
    [InlineData("ExitMode", "Later", "ExitMode", "one of Cleanup, Wait, Skip")]
    [InlineData("ExitMode", "1", "ExitMode", "one of Cleanup, Wait, Skip")]
    [InlineData("Executors:0:Type", "HighThroughput", "Executors:0:HeartbeatPeriod", "a time span")]
    [InlineData("RetryHandler", "x", "RetryHandler", "set it in code")]
    [InlineData("MemoHashers:a", "x", "MemoHashers", "set it in code")]
    [InlineData("Executors:0:Type", "ThreadPool", "Executors:0:MaxThreads", "a whole number")]
    public void One_bad_value_names_its_path(string key, string value, string path, string words)
    {
        var values = new List<(string, string)> { (key, value) };
        if (path == "Executors:0:HeartbeatPeriod") values.Add(("Executors:0:HeartbeatPeriod", "soon"));
        if (path == "Executors:0:MaxThreads") values.Add(("Executors:0:MaxThreads", "3.5"));
        var e = Assert.Throws<ConfigurationError>(() => DfkOptions.FromConfiguration(Memory(values.ToArray())));
        Assert.StartsWith(path, e.Field);
        Assert.Contains(words, e.Message);
    }

    [Fact]
    public async Task Options_from_configuration_load_and_run_and_their_values_are_validated_at_load()
    {
        var options = DfkOptions.FromConfiguration(Memory(("Executors:0:Type", "ThreadPool"), ("Executors:0:Label", "cpu"), ("Retries", "1")));
        options.RunDir = TempRunDir();
        await using (var dfk = await Dfk.LoadAsync(options))
        {
            Assert.Equal(["cpu"], dfk.ExecutorLabels);
            Assert.Equal(6, await dfk.App((int x) => x * 2).Invoke(3).Within());
        }
        var bad = DfkOptions.FromConfiguration(Memory(("Executors:0:Type", "ThreadPool"), ("Executors:0:MaxThreads", "0")));
        bad.RunDir = TempRunDir();
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => Dfk.LoadAsync(bad));
        Assert.Equal("ThreadPoolExecutorOptions.MaxThreads", e.Field);
    }
}
