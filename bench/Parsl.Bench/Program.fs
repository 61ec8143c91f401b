/// `dotnet run --project bench/Parsl.Bench -c Release [-- threads|htex|htex-chain|htex-noop|noop|mpi|vine|scale [managers=N slots=S procs=P tasks=T lost=L]]`: prints one figure per line.
module Parsl.Bench.Program

[<EntryPoint>]
let main argv =
    if argv.Length > 0 && argv[0] = "netmq-echo" then exit (Transport.echo argv)
    let want name = argv.Length = 0 || Array.contains name argv
    if Array.contains "noop" argv then ThreadPool.noop (printfn "%s")
    if Array.contains "chain" argv then ThreadPool.chain (printfn "%s")
    if want "threads" then ThreadPool.run (printfn "%s")
    if want "htex" then Htex.run (printfn "%s")
    if want "htex" || Array.contains "netmq" argv then Transport.run (printfn "%s")
    if Array.contains "htex-chain" argv then Htex.chain (printfn "%s")
    if Array.contains "htex-noop" argv then Htex.noopCpu (printfn "%s")
    if Array.contains "wq" argv then WorkQueue.run (printfn "%s")
    if Array.contains "vine" argv then TaskVine.run (printfn "%s")
    if want "monitoring" then Monitoring.run (printfn "%s")
    if Array.contains "endpoint" argv then Endpoint.run (printfn "%s")
    if Array.contains "mpi" argv then Mpi.run (printfn "%s")
    if Array.contains "scale" argv then
        // Caught, so that the row's `finally` runs and stops its simulators (an unhandled exception ends the process
        // without running it).
        try
            Scale.run argv (printfn "%s")
        with e ->
            eprintfn "scale: %O" e
            exit 1
    0
