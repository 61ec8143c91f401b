namespace Parsl.Node.Monitoring

open System

/// One resource sample of a try's process tree (one `resource` row; Parsl's psutil columns).
type ResourceSample =
    { Task: int
      Try: int
      TimestampUtc: DateTime
      Pid: int
      /// Resident memory over the host's total, in percent.
      MemoryPercent: float
      ChildrenCount: int
      /// CPU seconds in user and system mode, summed over the tree.
      TimeUser: float
      TimeSystem: float
      MemoryVirtual: float
      MemoryResident: float
      DiskRead: float
      DiskWrite: float
      Status: string
      CpuNum: float
      CtxSwitchesVoluntary: float
      CtxSwitchesInvoluntary: float }
