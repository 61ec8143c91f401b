namespace Parsl.Executors.Endpoint

open System
open System.Collections.Generic
open System.Net.Security
open System.Security.Cryptography.X509Certificates
open System.Threading
open System.Threading.Tasks
open RabbitMQ.Client
open RabbitMQ.Client.Events
open RabbitMQ.Client.Exceptions
open Parsl

/// One message as the transport carries it. `Headers` are read by the transport, never by our decoder.
type TransportMessage =
    { Kind: string
      MessageId: string
      ReplyTo: string
      Headers: IReadOnlyDictionary<string, string>
      Body: ReadOnlyMemory<byte> }

/// A message received, with how to acknowledge it (after its effect is durable elsewhere).
type Delivery =
    { Message: TransportMessage
      /// Whether the broker delivered it before (to a consumer that died or disconnected).
      Redelivered: bool
      /// Acknowledges the message; a no-op when the connection was re-established since (the broker has already
      /// put it back in its queue).
      Ack: unit -> Task }

/// The broker refused an operation (no permission, no such exchange); the message says which and the fix.
type BrokerRefused(message: string, code: int, inner: exn) =
    inherit ParslException(message, inner)
    /// The AMQP reply code (403 access refused, 404 not found).
    member _.Code = code

/// What the endpoint executor and daemon need from a transport. RabbitMQ now; a direct transport (gRPC tunnelled
/// over SSH) would implement the same. One loop publishes on each side; consumers' handlers run on the
/// transport's thread and should only hand work on.
type IEndpointTransport =
    inherit IAsyncDisposable
    /// Client: makes the task group's durable result queue, if it is missing.
    abstract DeclareResultQueueAsync: queue: string * CancellationToken -> Task
    /// Endpoint: makes its exchange and durable task queue, if they are missing.
    abstract DeclareEndpointAsync: endpoint: string * CancellationToken -> Task
    /// Publishes a persistent message to an endpoint; completes when the broker has it (confirmed).
    abstract SendToEndpointAsync: endpoint: string * TransportMessage * CancellationToken -> Task
    /// Publishes a persistent message to a queue; completes when the broker has it (confirmed).
    abstract SendToQueueAsync: queue: string * TransportMessage * CancellationToken -> Task
    /// Consumes a queue with at most `prefetch` unacknowledged messages; the subscription ends at disposal.
    abstract ConsumeAsync: queue: string * prefetch: int * handler: Func<Delivery, Task> * CancellationToken -> Task<IAsyncDisposable>
    /// Whether the connection is up now.
    abstract IsOpen: bool

/// The RabbitMQ transport: one connection with automatic recovery (consumers come back after a broker restart),
/// a publishing channel with confirmations, one channel per consumer.
[<Sealed>]
type RabbitMqTransport private (connection: IConnection, broker: BrokerOptions) =
    // Bumped at every recovery: acknowledgements of deliveries from before it are dropped (the broker requeued them).
    let mutable generation = 0
    let mutable publisher: IChannel = null
    let mutable disposed = false
    let consumers = List<IChannel>()

    do
        connection.add_RecoverySucceededAsync(fun _ _ ->
            Interlocked.Increment &generation |> ignore
            Task.CompletedTask)

    static let describe (broker: BrokerOptions) (what: string) (e: exn) : exn =
        let rec find (e: exn) =
            match e with
            | null -> None
            | :? OperationInterruptedException as o when not (isNull o.ShutdownReason) -> Some(int o.ShutdownReason.ReplyCode, o.ShutdownReason.ReplyText)
            | :? AlreadyClosedException as o when not (isNull o.ShutdownReason) -> Some(int o.ShutdownReason.ReplyCode, o.ShutdownReason.ReplyText)
            | e -> find e.InnerException
        match find e with
        | Some(403, text) ->
            BrokerRefused(
                sprintf "the broker refused %s for user '%s' on virtual host '%s' (%s): ask the broker's administrator for permission (rabbitmqctl set_permissions)"
                    what broker.User broker.VirtualHost text,
                403, e)
        | Some(404, text) ->
            BrokerRefused(sprintf "%s: not found on the broker (%s)" what text, 404, e)
        | _ -> e

    static let properties (m: TransportMessage) =
        let p = BasicProperties()
        p.Persistent <- true
        p.Type <- m.Kind
        if not (String.IsNullOrEmpty m.MessageId) then p.MessageId <- m.MessageId
        if not (String.IsNullOrEmpty m.ReplyTo) then p.ReplyTo <- m.ReplyTo
        let h = Dictionary<string, obj>()
        for KeyValue(k, v) in m.Headers do
            h[k] <- box v
        p.Headers <- h
        p

    static let headerText (v: obj) =
        match v with
        | :? (byte[]) as b -> Text.Encoding.UTF8.GetString b
        | null -> null
        | v -> string v

    static let ofDelivery (props: IReadOnlyBasicProperties) (body: ReadOnlyMemory<byte>) =
        let headers = Dictionary<string, string>()
        if not (isNull props.Headers) then
            for KeyValue(k, v) in props.Headers do
                headers[k] <- headerText v
        { Kind = (if isNull props.Type then "" else props.Type)
          MessageId = (if isNull props.MessageId then "" else props.MessageId)
          ReplyTo = (if isNull props.ReplyTo then "" else props.ReplyTo)
          Headers = headers
          // The client reuses its buffer after the handler returns: the body is copied.
          Body = ReadOnlyMemory<byte>(body.ToArray()) }

    /// Connects; retries until `timeout` while the broker is unreachable (it may be starting).
    static member ConnectAsync(broker: BrokerOptions, clientName: string, timeout: TimeSpan, ct: CancellationToken) : Task<RabbitMqTransport> =
        task {
            let factory = ConnectionFactory()
            factory.HostName <- broker.Host
            factory.Port <- broker.Port
            factory.VirtualHost <- broker.VirtualHost
            factory.UserName <- broker.User
            factory.Password <- broker.Password
            factory.AutomaticRecoveryEnabled <- true
            factory.TopologyRecoveryEnabled <- true
            factory.NetworkRecoveryInterval <- TimeSpan.FromSeconds 1.0
            factory.RequestedHeartbeat <- TimeSpan.FromSeconds 10.0
            factory.ClientProvidedName <- clientName
            if broker.Tls then
                let ssl = SslOption()
                ssl.Enabled <- true
                ssl.ServerName <- defaultArg broker.ServerName broker.Host
                match broker.CaFile with
                | Some ca ->
                    let authority = X509CertificateLoader.LoadCertificateFromFile ca
                    let name = ssl.ServerName
                    ssl.CertificateValidationCallback <-
                        RemoteCertificateValidationCallback(fun _ cert _ errors ->
                            // Only the name and the chain to our own authority decide; the system store does not.
                            if isNull cert || errors.HasFlag SslPolicyErrors.RemoteCertificateNameMismatch then false
                            else
                                use chain = new X509Chain()
                                chain.ChainPolicy.TrustMode <- X509ChainTrustMode.CustomRootTrust
                                chain.ChainPolicy.CustomTrustStore.Add authority |> ignore
                                chain.ChainPolicy.RevocationMode <- X509RevocationMode.NoCheck
                                let leaf = X509CertificateLoader.LoadCertificate(cert.GetRawCertData())
                                let ok = chain.Build leaf
                                ignore name
                                ok)
                | None -> ()
                factory.Ssl <- ssl
            let deadline = DateTime.UtcNow + timeout
            let mutable connection: IConnection = null
            let mutable lastError: exn = null
            while isNull connection do
                try
                    let! c = factory.CreateConnectionAsync(clientName, ct)
                    connection <- c
                with
                | :? BrokerUnreachableException as e when DateTime.UtcNow < deadline && not (e.InnerException :? AuthenticationFailureException) ->
                    lastError <- e
                    do! Task.Delay(500, ct)
                | :? BrokerUnreachableException as e ->
                    let detail =
                        match e.InnerException with
                        | :? AuthenticationFailureException as a -> sprintf "the broker refused user '%s': %s; check BrokerOptions.User and Password" broker.User a.Message
                        | null -> e.Message
                        | i -> i.Message
                    raise (
                        ExecutorError(
                            "Endpoint",
                            sprintf "cannot connect to the broker at %s:%d (virtual host '%s', TLS %b): %s" broker.Host broker.Port broker.VirtualHost broker.Tls detail,
                            e))
            ignore lastError
            return RabbitMqTransport(connection, broker)
        }

    member private _.Publisher(ct: CancellationToken) =
        task {
            if isNull publisher || publisher.IsClosed then
                if not (isNull publisher) then
                    try publisher.Dispose() with _ -> ()
                let! ch = connection.CreateChannelAsync(CreateChannelOptions(true, true), ct)
                publisher <- ch
            return publisher
        }

    member private this.Publish(exchange: string, routingKey: string, m: TransportMessage, what: string, ct: CancellationToken) : Task =
        task {
            let! ch = this.Publisher ct
            try
                do! ch.BasicPublishAsync(exchange, routingKey, true, properties m, m.Body, ct)
            with
            | :? PublishException as e when e.IsReturn ->
                raise (BrokerRefused(sprintf "%s: the broker has no queue to route it to" what, 312, e))
            | e -> raise (describe broker what e)
        }
        :> Task

    interface IEndpointTransport with
        member _.IsOpen = connection.IsOpen

        member _.DeclareResultQueueAsync(queue, ct) =
            task {
                use! ch = connection.CreateChannelAsync(null, ct)
                try
                    let! _ = ch.QueueDeclareAsync(queue, true, false, false, null, false, false, ct)
                    ()
                with e -> raise (describe broker (sprintf "declaring the result queue '%s'" queue) e)
            }
            :> Task

        member _.DeclareEndpointAsync(endpoint, ct) =
            task {
                use! ch = connection.CreateChannelAsync(null, ct)
                let exchange = EndpointWire.endpointExchange endpoint
                let queue = EndpointWire.taskQueue endpoint
                try
                    do! ch.ExchangeDeclareAsync(exchange, ExchangeType.Direct, true, false, null, false, false, ct)
                    let! _ = ch.QueueDeclareAsync(queue, true, false, false, null, false, false, ct)
                    do! ch.QueueBindAsync(queue, exchange, "tasks", null, false, ct)
                with e -> raise (describe broker (sprintf "declaring endpoint '%s'" endpoint) e)
            }
            :> Task

        member this.SendToEndpointAsync(endpoint, m, ct) =
            this.Publish(EndpointWire.endpointExchange endpoint, "tasks", m, sprintf "publishing to endpoint '%s' (exchange %s)" endpoint (EndpointWire.endpointExchange endpoint), ct)

        member this.SendToQueueAsync(queue, m, ct) =
            this.Publish("", queue, m, sprintf "publishing to queue '%s'" queue, ct)

        member _.ConsumeAsync(queue, prefetch, handler, ct) =
            task {
                let! ch = connection.CreateChannelAsync(null, ct)
                lock consumers (fun () -> consumers.Add ch)
                try
                    do! ch.BasicQosAsync(0u, uint16 (max 1 (min prefetch 65535)), false, ct)
                    let consumer = AsyncEventingBasicConsumer(ch)
                    consumer.add_ReceivedAsync(fun _ ea ->
                        let born = Volatile.Read &generation
                        let tag = ea.DeliveryTag
                        let delivery =
                            { Message = ofDelivery ea.BasicProperties ea.Body
                              Redelivered = ea.Redelivered
                              Ack =
                                fun () ->
                                    if Volatile.Read &generation <> born || ch.IsClosed then Task.CompletedTask
                                    else
                                        task {
                                            try do! ch.BasicAckAsync(tag, false, CancellationToken.None)
                                            with _ -> ()
                                        }
                                        :> Task }
                        handler.Invoke delivery)
                    let! tag = ch.BasicConsumeAsync(queue, false, consumer, ct)
                    return
                        { new IAsyncDisposable with
                            member _.DisposeAsync() =
                                ValueTask(
                                    task {
                                        try do! ch.BasicCancelAsync(tag, false, CancellationToken.None) with _ -> ()
                                        try do! ch.CloseAsync() with _ -> ()
                                        ch.Dispose()
                                    }) }
                with e ->
                    raise (describe broker (sprintf "consuming queue '%s'" queue) e)
                    return Unchecked.defaultof<IAsyncDisposable>
            }

        member _.DisposeAsync() =
            ValueTask(
                task {
                    if not disposed then
                        disposed <- true
                        for ch in lock consumers (fun () -> List.ofSeq consumers) do
                            try ch.Dispose() with _ -> ()
                        if not (isNull publisher) then
                            try publisher.Dispose() with _ -> ()
                        try do! connection.CloseAsync(TimeSpan.FromSeconds 5.0) with _ -> ()
                        connection.Dispose()
                })
