namespace Parsl.Executors.Endpoint

open System
open System.Text.Json
open System.Text.Json.Nodes
open Parsl

/// An endpoint daemon's configuration (`config.json` in its directory, written by `parsl-endpoint configure`).
///
/// `Engine` holds the settings of the executor tasks run on, as strings that may hold `{{key}}` placeholders
/// filled from a client's `UserEndpointConfig`; `Template` lists the keys a client may set, each with its default
/// and the values it may take. Engine settings: `type` = `ThreadPool` (`maxThreads`) or `HighThroughput`
/// (`maxWorkersPerNode`, `coresPerWorker`, `initBlocks`, `maxBlocks`; provider `Local`).
type EndpointConfig =
    { Name: string
      Broker: BrokerOptions
      /// Tokens a client must present (any one of them); checked on every message before its body is read.
      Tokens: string list
      Engine: Map<string, string>
      Template: Map<string, TemplateKey>
      /// Unacknowledged task messages the daemon holds at once. Default 64.
      Prefetch: int
      /// Whether clients' assembly paths may be read here (a shared file system): an assembly whose file at the
      /// client's path has the client's hash is loaded from there. When false, or when the file differs, the
      /// endpoint asks the client for the bytes once and caches them by hash. Default true.
      SharedFileSystem: bool }

/// Reading, checking and writing endpoint configs. Pure: text in, text out.
[<RequireQualifiedAccess>]
module EndpointConfig =
    /// Engine settings an endpoint understands.
    let engineKeys = [ "type"; "maxThreads"; "maxWorkersPerNode"; "coresPerWorker"; "initBlocks"; "maxBlocks"; "provider" ]

    /// A new endpoint's config: a thread pool whose size a client may choose, between 1 and 16.
    let template (name: string) (broker: BrokerOptions) (token: string) =
        { Name = name
          Broker = broker
          Tokens = [ token ]
          Engine = Map [ "type", "ThreadPool"; "maxThreads", "{{max_threads}}" ]
          Template = Map [ "max_threads", { Default = "4"; Pattern = "[1-9]|1[0-6]" } ]
          Prefetch = 64
          SharedFileSystem = true }

    /// Every problem, each naming its field and the fix.
    let validate (c: EndpointConfig) : ConfigurationError list =
        let f n = "endpoint." + n
        [ if not (EndpointWire.validName c.Name) then ConfigurationError(f "name", sprintf "'%s': letters, digits, '-' and '_' only" c.Name)
          if String.IsNullOrWhiteSpace c.Broker.Host then ConfigurationError(f "broker.host", "is empty; give the broker's host")
          if c.Broker.Port < 1 || c.Broker.Port > 65535 then ConfigurationError(f "broker.port", sprintf "%d is not a port" c.Broker.Port)
          if String.IsNullOrEmpty c.Broker.User then ConfigurationError(f "broker.user", "is empty; give the broker user the endpoint connects as")
          if c.Tokens.IsEmpty || c.Tokens |> List.exists (fun t -> String.IsNullOrEmpty t || t.Length < 16) then
              ConfigurationError(f "tokens", "give at least one token of 16 characters or more (parsl-endpoint configure makes one)")
          for KeyValue(k, _) in c.Engine do
              if not (List.contains k engineKeys) then
                  ConfigurationError(f ("engine." + k), sprintf "is not an engine setting; known: %s" (String.Join(", ", engineKeys)))
          match Map.tryFind "type" c.Engine with
          | Some("ThreadPool" | "HighThroughput") -> ()
          | other -> ConfigurationError(f "engine.type", sprintf "%A: use ThreadPool or HighThroughput" other)
          for KeyValue(k, t) in c.Template do
              match (try Text.RegularExpressions.Regex(t.Pattern) |> ignore; None with e -> Some e.Message) with
              | Some m -> ConfigurationError(f ("template." + k + ".pattern"), m)
              | None -> ()
          match Template.render c.Template c.Engine [] with
          | Error e -> ConfigurationError(f "engine", Template.describe e + " (with the template's defaults)")
          | Ok _ -> ()
          if c.Prefetch < 1 then ConfigurationError(f "prefetch", "must be at least 1; the default is 64") ]

    let private str (o: JsonObject) (k: string) (def: string) =
        match o[k] with
        | null -> def
        | n -> n.GetValue<string>()

    let private int' (o: JsonObject) (k: string) (def: int) =
        match o[k] with
        | null -> def
        | n -> n.GetValue<int>()

    /// Reads a config; raises `ConfigurationError` naming the field.
    let parse (json: string) : EndpointConfig =
        let root =
            try JsonNode.Parse(json).AsObject()
            with e -> raise (ConfigurationError("endpoint", sprintf "config.json is not a JSON object: %s" e.Message))
        try
            let b = match root["broker"] with null -> JsonObject() | n -> n.AsObject()
            let tls = match b["tls"] with null -> false | n -> n.GetValue<bool>()
            let broker =
                { Host = str b "host" "127.0.0.1"
                  Port = int' b "port" (if tls then 5671 else 5672)
                  VirtualHost = str b "virtualHost" "/"
                  User = str b "user" ""
                  Password = str b "password" ""
                  Tls = tls
                  CaFile = Option.ofObj (str b "caFile" null)
                  ServerName = Option.ofObj (str b "serverName" null) }
            let tokens = match root["tokens"] with null -> [] | n -> [ for t in n.AsArray() -> t.GetValue<string>() ]
            let engine = match root["engine"] with null -> Map.empty | n -> Map [ for KeyValue(k, v) in n.AsObject() -> k, (if v.GetValueKind() = JsonValueKind.String then v.GetValue<string>() else v.ToJsonString()) ]
            let template =
                match root["template"] with
                | null -> Map.empty
                | n ->
                    Map [ for KeyValue(k, v) in n.AsObject() ->
                              let o = v.AsObject()
                              k, { Default = str o "default" ""; Pattern = str o "pattern" ".*" } ]
            { Name = str root "name" ""
              Broker = broker
              Tokens = tokens
              Engine = engine
              Template = template
              Prefetch = int' root "prefetch" 64
              SharedFileSystem = (match root["sharedFileSystem"] with null -> true | n -> n.GetValue<bool>()) }
        with
        | :? ConfigurationError -> reraise ()
        | e -> raise (ConfigurationError("endpoint", sprintf "config.json: %s" e.Message))

    /// Writes a config as indented JSON.
    let render (c: EndpointConfig) : string =
        let broker = JsonObject()
        broker["host"] <- JsonValue.Create c.Broker.Host
        broker["port"] <- JsonValue.Create c.Broker.Port
        broker["virtualHost"] <- JsonValue.Create c.Broker.VirtualHost
        broker["user"] <- JsonValue.Create c.Broker.User
        broker["password"] <- JsonValue.Create c.Broker.Password
        broker["tls"] <- JsonValue.Create c.Broker.Tls
        c.Broker.CaFile |> Option.iter (fun p -> broker["caFile"] <- JsonValue.Create p)
        c.Broker.ServerName |> Option.iter (fun p -> broker["serverName"] <- JsonValue.Create p)
        let root = JsonObject()
        root["name"] <- JsonValue.Create c.Name
        root["broker"] <- broker
        let tokens = JsonArray()
        for t in c.Tokens do
            tokens.Add(JsonValue.Create t)
        root["tokens"] <- tokens
        let engine = JsonObject()
        for KeyValue(k, v) in c.Engine do
            engine[k] <- JsonValue.Create v
        root["engine"] <- engine
        let template = JsonObject()
        for KeyValue(k, t) in c.Template do
            let o = JsonObject()
            o["default"] <- JsonValue.Create t.Default
            o["pattern"] <- JsonValue.Create t.Pattern
            template[k] <- o
        root["template"] <- template
        root["prefetch"] <- JsonValue.Create c.Prefetch
        root["sharedFileSystem"] <- JsonValue.Create c.SharedFileSystem
        root.ToJsonString(JsonSerializerOptions(WriteIndented = true))
