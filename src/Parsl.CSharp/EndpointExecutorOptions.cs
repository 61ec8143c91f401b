using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using Parsl.Executors;
using Parsl.Executors.Endpoint;

namespace Parsl;

/// <summary>Runs tasks on a remote endpoint daemon (<c>parsl-endpoint start NAME</c>) through a RabbitMQ broker:
/// Globus Compute's model, self-hosted. Tasks and results are persistent messages on durable queues, so a client or
/// an endpoint may stop, or the broker restart, and every task still completes once. Function apps travel by
/// reference (the endpoint loads the same assemblies, fetched by hash when its machine lacks them); shell apps as
/// their command lines. Resource specification: any key the endpoint's executor accepts, plus
/// <c>user_endpoint_config</c> (a <c>Dictionary&lt;string, string&gt;</c>) for one call.</summary>
/// <example><code>
/// var endpoint = new EndpointExecutorOptions
/// {
///     Endpoint = "cluster", BrokerHost = "broker.example.org", BrokerUser = "alice", BrokerPassword = pw,
///     Tls = true, Token = token, UserEndpointConfig = { ["max_workers"] = "4" },
/// };
/// await using var dfk = await Dfk.LoadAsync(new DfkOptions { Executors = { endpoint } });
/// </code></example>
public sealed class EndpointExecutorOptions : ExecutorOptions
{
    /// <summary>Options with the defaults: label <c>endpoint</c>, broker 127.0.0.1:5672, virtual host <c>/</c>,
    /// a new task group, batches of 128.</summary>
    public EndpointExecutorOptions() : base("endpoint") { }

    /// <summary>The endpoint's name, as given to <c>parsl-endpoint configure NAME</c>. Required.</summary>
    public string Endpoint { get; set; } = "";

    /// <summary>The broker's host. Default <c>127.0.0.1</c>.</summary>
    public string BrokerHost { get; set; } = "127.0.0.1";

    /// <summary>The broker's port. Default 5672, or 5671 when <see cref="Tls"/> is on and this was not set.</summary>
    public int? BrokerPort { get; set; }

    /// <summary>The broker's virtual host. Default <c>/</c>.</summary>
    public string VirtualHost { get; set; } = "/";

    /// <summary>The broker user this client connects as; it needs write permission on the exchange
    /// <c>parsl.ep.NAME</c> and configure/read permission on <c>parsl.tg.*</c> queues. Required.</summary>
    public string BrokerUser { get; set; } = "";

    /// <summary>That user's password.</summary>
    public string BrokerPassword { get; set; } = "";

    /// <summary>Connect to the broker with TLS. Default false.</summary>
    public bool Tls { get; set; }

    /// <summary>With TLS: the PEM file of the certificate authority that signed the broker's certificate, when the
    /// system does not trust it. Default none.</summary>
    public string? BrokerCaFile { get; set; }

    /// <summary>With TLS: the name the broker's certificate must carry. Default: <see cref="BrokerHost"/>.</summary>
    public string? BrokerServerName { get; set; }

    /// <summary>A token the endpoint accepts (one of its config's <c>tokens</c>). Required.</summary>
    public string Token { get; set; } = "";

    /// <summary>The task group: a client started again with the same id gets the results of the tasks the earlier
    /// one submitted (<see cref="Dfk.ReceiveUnclaimedAsync"/>). Default: a new id.</summary>
    public string TaskGroupId { get; set; } = Guid.NewGuid().ToString("N");

    /// <summary>At most this many tasks per message to the endpoint. Default 128; at least 1.</summary>
    public int BatchSize { get; set; } = 128;

    /// <summary>Values for the endpoint's config template, for every task (a call's
    /// <c>Resources["user_endpoint_config"]</c> adds to or overrides them for that call). Default empty.</summary>
    public IDictionary<string, string> UserEndpointConfig { get; } = new Dictionary<string, string>();

    /// <summary>How long to keep trying to reach the broker when the kernel loads. Default 30 s.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How long the broker may stay unreachable while tasks are in flight before those tasks fail with
    /// <see cref="Parsl.Executors.BrokerLost"/>; without a bound, a broker that never comes back would leave the run and
    /// its cleanup waiting forever. <see cref="System.Threading.Timeout.InfiniteTimeSpan"/> waits forever. Default 120 s.</summary>
    public TimeSpan BrokerLostTimeout { get; set; } = TimeSpan.FromSeconds(120);

    internal EndpointOptions ToCore()
    {
        var defaults = EndpointOptionsModule.defaults();
        var broker = new BrokerOptions(
            BrokerHost ?? "",
            BrokerPort ?? (Tls ? 5671 : 5672),
            VirtualHost ?? "",
            BrokerUser ?? "",
            BrokerPassword ?? "",
            Tls,
            BrokerCaFile is null ? FSharpOption<string>.None : FSharpOption<string>.Some(BrokerCaFile),
            BrokerServerName is null ? FSharpOption<string>.None : FSharpOption<string>.Some(BrokerServerName));
        var config = MapModule.OfSeq(UserEndpointConfig.Select(kv => Tuple.Create(kv.Key, kv.Value)));
        return new EndpointOptions(Label, Endpoint ?? "", broker, Token ?? "", TaskGroupId ?? "", BatchSize, config, ConnectTimeout, BrokerLostTimeout);
    }

    internal override IExecutor Build() => new EndpointExecutor(ToCore());
}

/// <summary>A result of an endpoint task group that no task of this kernel waits for: a task an earlier client
/// with the same <see cref="EndpointExecutorOptions.TaskGroupId"/> submitted (Globus Compute's <c>reload_tasks</c>).</summary>
public sealed class EndpointTaskResult
{
    internal EndpointTaskResult(EndpointResult r) => (TaskId, Value, Error) = (r.TaskId, r.Value, r.Error);

    /// <summary>The submitting client's task id.</summary>
    public int TaskId { get; }

    /// <summary>The result when the task succeeded.</summary>
    public object? Value { get; }

    /// <summary>The exception when the task failed; null otherwise.</summary>
    public Exception? Error { get; }
}

public sealed partial class Dfk
{
    /// <summary>The next result of the endpoint executor <paramref name="label"/>'s task group that no task of this
    /// kernel waits for: a task an earlier client with the same task-group id submitted.</summary>
    /// <param name="label">The <see cref="EndpointExecutorOptions"/>' label.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>The result, when one arrives.</returns>
    /// <exception cref="ArgumentException"><paramref name="label"/> is not an endpoint executor of this kernel.</exception>
    public async Task<EndpointTaskResult> ReceiveUnclaimedAsync(string label, CancellationToken cancellationToken = default)
    {
        if (!kernel.ExecutorLabels.Contains(label) || kernel.Executor(label) is not EndpointExecutor endpoint)
            throw new ArgumentException($"'{label}' is not the label of an EndpointExecutorOptions of this kernel", nameof(label));
        var r = await endpoint.ReceiveUnclaimedAsync(cancellationToken).ConfigureAwait(false);
        return new EndpointTaskResult(r);
    }
}
