using System.Collections.Concurrent;
using Microsoft.Data.Sqlite;
using Xunit;

namespace Parsl.CSharp.Tests;

public class MonitoringTests
{
    [Fact]
    public async Task EventsAndCountsReachCSharpAndTheDatabaseHasParslsRows()
    {
        var changes = new ConcurrentQueue<TaskStateChange>();
        var observed = new ConcurrentQueue<TaskStateChange>();
        string db;
        string runId;
        await using (var dfk = await TestKernel.LoadAsync(o => o.Monitoring = new MonitoringOptions { WorkflowName = "csharp-test" }))
        {
            var monitor = dfk.Monitoring!;
            monitor.TaskStateChanged += (_, e) => changes.Enqueue(e);
            using var subscription = monitor.Subscribe(new Collect(observed));
            var square = dfk.App((int x) => x * x);
            var fail = dfk.App((int x) => x > 0 ? throw new InvalidOperationException("too big") : x);
            Assert.Equal(16, await square.Invoke(4).Within());
            await TestKernel.FailureOf(fail.Invoke(1));
            await monitor.FlushAsync().WaitAsync(TestKernel.Limit);
            Assert.Equal(1, monitor.Count(States.ExecDone));
            Assert.Equal(1, monitor.Count(States.Failed));
            Assert.Equal(0, monitor.Counts[States.Pending]);
            db = monitor.DatabasePath!;
            runId = monitor.RunId;
        }
        Assert.Equal(
            new[] { States.Pending, States.Launched, States.Running, States.RunningEnded, States.ExecDone },
            changes.Where(c => c.TaskId == 0).Select(c => c.State).ToArray());
        Assert.Contains(changes, c => c.TaskId == 1 && c.State == States.Failed);
        Assert.Equal(changes.Count, observed.Count);

        using var conn = new SqliteConnection($"Data Source={db};Mode=ReadOnly;Pooling=False");
        conn.Open();
        using var cmd = conn.CreateCommand();
        cmd.CommandText = "SELECT workflow_name, tasks_completed_count, tasks_failed_count FROM workflow WHERE run_id = $r";
        cmd.Parameters.AddWithValue("$r", runId);
        using (var r = cmd.ExecuteReader())
        {
            Assert.True(r.Read());
            Assert.Equal("csharp-test", r.GetString(0));
            Assert.Equal(1, r.GetInt32(1));
            Assert.Equal(1, r.GetInt32(2));
        }
        cmd.CommandText = "SELECT task_fail_message FROM try WHERE run_id = $r AND task_id = 1";
        Assert.Equal("too big", cmd.ExecuteScalar());
    }

    [Fact]
    public async Task BadMonitoringOptionsNameTheCSharpProperty()
    {
        var e = await Assert.ThrowsAsync<ConfigurationError>(() =>
            TestKernel.LoadAsync(o => o.Monitoring = new MonitoringOptions { DashboardAddress = "0.0.0.0" }));
        Assert.Equal("MonitoringOptions.DashboardToken", e.Field);
        e = await Assert.ThrowsAsync<ConfigurationError>(() =>
            TestKernel.LoadAsync(o => o.Monitoring = new MonitoringOptions { ExecutorPollInterval = TimeSpan.Zero }));
        Assert.Equal("MonitoringOptions.ExecutorPollInterval", e.Field);
    }

    [Fact]
    public async Task WithoutMonitoringThereIsNoMonitor()
    {
        await using var dfk = await TestKernel.LoadAsync();
        Assert.Null(dfk.Monitoring);
    }

    private sealed class Collect(ConcurrentQueue<TaskStateChange> into) : IObserver<TaskStateChange>
    {
        public void OnCompleted() { }
        public void OnError(Exception error) { }
        public void OnNext(TaskStateChange value) => into.Enqueue(value);
    }
}
