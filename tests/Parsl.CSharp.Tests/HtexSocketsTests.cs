using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>The interchange's sockets from C#: managers over TCP spread across several of them
/// (<see cref="HighThroughputExecutorOptions.InterchangeSockets"/>), each connecting to the one its id picks.</summary>
public class HtexSocketsTests
{
    [Fact]
    public async Task Managers_over_TCP_reach_an_interchange_listening_on_several_sockets()
    {
        await using var dfk = await LoadAsync(o => o.Executors.Add(new HighThroughputExecutorOptions
        {
            Label = "htex",
            MaxWorkersPerNode = 1,
            SameHostSocket = false,
            InterchangeSockets = 3,
            HeartbeatPeriod = TimeSpan.FromMilliseconds(200),
            HeartbeatThreshold = TimeSpan.FromSeconds(5),
            StrategyPeriod = TimeSpan.FromMilliseconds(200),
            Provider = new LocalProviderOptions
            {
                InitBlocks = 2, MinBlocks = 2, MaxBlocks = 2, StatusPollingInterval = TimeSpan.FromMilliseconds(200),
            },
        }));
        var square = dfk.App((int x) => x * x);
        var results = await Task.WhenAll(Enumerable.Range(1, 20).Select(i => square.Invoke(i).Within()));
        Assert.Equal(Enumerable.Range(1, 20).Select(i => i * i), results);
        var managers = await dfk.ConnectedManagersAsync().WaitAsync(Limit);
        Assert.NotEmpty(managers);
        Assert.All(managers, m => Assert.False(m.Local));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(65)]
    public async Task InterchangeSockets_out_of_range_is_refused_at_load_naming_the_property(int sockets)
    {
        var htex = new HighThroughputExecutorOptions { InterchangeSockets = sockets };
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.Executors.Add(htex)));
        Assert.Equal("HighThroughputExecutorOptions.InterchangeSockets", e.Field);
        Assert.Contains("from 1 to 64", e.Message);
        Assert.DoesNotContain("None", e.Message);
    }

    [Fact]
    public async Task More_sockets_than_ports_in_the_range_is_refused_naming_the_CSharp_range()
    {
        var htex = new HighThroughputExecutorOptions { InterchangeSockets = 8, WorkerPortRangeStart = 54000, WorkerPortRangeEnd = 54004 };
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.Executors.Add(htex)));
        Assert.Equal("HighThroughputExecutorOptions.InterchangeSockets", e.Field);
        Assert.Contains("WorkerPortRangeStart..WorkerPortRangeEnd", e.Message);
    }
}
