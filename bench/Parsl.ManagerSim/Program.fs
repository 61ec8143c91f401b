/// `Parsl.ManagerSim --address tcp://127.0.0.1:PORT[,PORT...] --managers N --slots S [--cert-dir DIR] [--plain-tcp] [--no-auth]
/// [--prefetch P] [--hb-period MS] [--prefix ID] [--block-id B] [--hold]`: N simulated managers (see `Sim`). Prints
/// `registered N` once all are accepted; reads `stats` and `stop` on stdin and stops when stdin ends.
module Parsl.ManagerSim.Program

open System

[<EntryPoint>]
let main argv =
    let value (name: string) =
        match Array.tryFindIndex ((=) name) argv with
        | Some i when i + 1 < argv.Length -> Some argv[i + 1]
        | _ -> None
    let flag (name: string) = Array.contains name argv
    match value "--address", value "--managers" with
    | Some address, Some n ->
        let certDir = value "--cert-dir"
        Sim.run
            { Address = address
              CertDir = certDir
              Curve = certDir.IsSome && not (flag "--plain-tcp")
              Authenticate = certDir.IsSome && not (flag "--no-auth")
              Managers = int n
              Slots = value "--slots" |> Option.map int |> Option.defaultValue 64
              Prefetch = value "--prefetch" |> Option.map int |> Option.defaultValue 0
              HeartbeatPeriod = TimeSpan.FromMilliseconds(value "--hb-period" |> Option.map float |> Option.defaultValue 30000.0)
              Prefix = value "--prefix" |> Option.defaultValue "sim-"
              BlockId = value "--block-id" |> Option.defaultValue "0"
              Hold = flag "--hold"
              Out = Console.Out }
            Console.In
    | _ ->
        eprintfn "usage: Parsl.ManagerSim --address tcp://HOST:PORT[,PORT...] --managers N [--slots S] [--cert-dir DIR] [--plain-tcp] [--no-auth] [--prefetch P] [--hb-period MS] [--prefix ID] [--block-id B] [--hold]"
        2
