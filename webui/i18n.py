"""English and Chinese labels, switched at run time from a dropdown (as in LlamaBoard).

Components register themselves with ``Labels.add(component, key, attr)``; switching the locale
returns one ``gr.update`` per registered component. Keys missing from a locale fall back to English.
"""

from __future__ import annotations

from typing import Any

LOCALES = {"en": "English", "zh": "中文"}

TEXT: dict[str, dict[str, str]] = {
    "title": {"en": "# MemFactory — a workbench for memory agents",
              "zh": "# MemFactory — 记忆智能体工作台"},
    "lang": {"en": "Language", "zh": "语言"},
    "tab.assemble": {"en": "Assemble", "zh": "组装"},
    "tab.runs": {"en": "Runs", "zh": "运行记录"},
    "tab.playground": {"en": "Playground", "zh": "对比试验"},
    "pg.intro": {"en": "Run 2–4 workflows on the same eval samples and compare answers, scores, latency, tokens and "
                       "memory traces. Greedy decoding (temperature 0) by default.",
                 "zh": "在同一批评测样本上运行 2–4 个工作流，对比答案、得分、延迟、token 数和记忆轨迹。默认贪心解码（温度 0）。"},
    "pg.set": {"en": "Eval set", "zh": "评测集"},
    "pg.n": {"en": "Samples (N)", "zh": "样本数 (N)"},
    "pg.temperature": {"en": "Temperature (0 = greedy)", "zh": "温度（0 = 贪心）"},
    "pg.max_tokens": {"en": "Max new tokens (0 = preset's)", "zh": "最大生成 token（0 = 预设值）"},
    "pg.model": {"en": "Model path for all local workflows", "zh": "所有本地工作流的模型路径"},
    "pg.workflow": {"en": "Workflow {n}", "zh": "工作流 {n}"},
    "pg.label": {"en": "Name", "zh": "名称"},
    "pg.preset": {"en": "Preset", "zh": "预设"},
    "pg.checkpoint": {"en": "Checkpoint (run id or folder; empty = base weights)", "zh": "检查点（运行 ID 或目录；空 = 基础权重）"},
    "pg.endpoint": {"en": "OpenAI-compatible endpoint", "zh": "OpenAI 兼容接口"},
    "pg.base_url": {"en": "Base URL", "zh": "基础 URL"},
    "pg.served_model": {"en": "Model name", "zh": "模型名称"},
    "pg.key_env": {"en": "API key env var", "zh": "API 密钥环境变量"},
    "pg.run": {"en": "▶️ Compare", "zh": "▶️ 开始对比"},
    "pg.summary": {"en": "Summary (avg score per workflow)", "zh": "汇总（各工作流平均得分）"},
    "pg.table": {"en": "Per sample (⚠️ = workflows disagree)", "zh": "逐样本（⚠️ = 工作流结果不一致）"},
    "pg.sample": {"en": "Sample (side by side, with memory traces)", "zh": "样本（并排查看，含记忆轨迹）"},
    "pg.csv": {"en": "⬇️ Download CSV", "zh": "⬇️ 下载 CSV"},
    "pg.json": {"en": "⬇️ Download JSON", "zh": "⬇️ 下载 JSON"},
    "tab.chat": {"en": "Chat", "zh": "对话"},
    "chat.intro": {"en": "Talk to a memory agent, trained or not, and watch its memory: what each turn adds, updates or "
                         "deletes, what each answer retrieved, and the whole bank. Memory-R1 and RMM remember across "
                         "sessions in a named bank; MemAgent reads a document chunk by chunk. Each step appears when its "
                         "model call ends.",
                   "zh": "与记忆智能体（训练过或未训练）对话并查看其记忆：每轮新增、更新或删除了什么，每个回答检索到了什么，以及整个记忆库。"
                         "Memory-R1 与 RMM 在命名的记忆库中跨会话记忆；MemAgent 逐块阅读文档。每一步在其模型调用结束时显示。"},
    "chat.preset": {"en": "Preset (agent)", "zh": "预设（智能体）"},
    "chat.model": {"en": "Local model path (empty = the preset's)", "zh": "本地模型路径（空 = 预设中的）"},
    "chat.max_tokens": {"en": "Max new tokens (0 = preset's)", "zh": "最大生成 token（0 = 预设值）"},
    "chat.bank_box": {"en": "### Memory bank", "zh": "### 记忆库"},
    "chat.bank": {"en": "Bank (a file in the workspace's banks/)", "zh": "记忆库（工作区 banks/ 下的文件）"},
    "chat.bank_open": {"en": "📂 Open bank", "zh": "📂 打开记忆库"},
    "chat.bank_upload": {"en": "Upload a bank (.db)", "zh": "上传记忆库 (.db)"},
    "chat.bank_download": {"en": "⬇️ Download bank", "zh": "⬇️ 下载记忆库"},
    "chat.new_session": {"en": "🆕 New session (keeps the bank)", "zh": "🆕 新会话（保留记忆库）"},
    "chat.reset_confirm": {"en": "I understand Reset empties this bank", "zh": "我了解重置会清空此记忆库"},
    "chat.reset": {"en": "🗑️ Reset memory", "zh": "🗑️ 重置记忆"},
    "chat.doc_box": {"en": "### Document", "zh": "### 文档"},
    "chat.doc": {"en": "Document (paste; read chunk by chunk at the first question)",
                 "zh": "文档（粘贴；在第一个问题时逐块阅读）"},
    "chat.doc_upload": {"en": "Upload a text file", "zh": "上传文本文件"},
    "chat.chatbot": {"en": "Conversation", "zh": "对话"},
    "chat.message": {"en": "Message", "zh": "消息"},
    "chat.send": {"en": "➤ Send", "zh": "➤ 发送"},
    "chat.stop": {"en": "⏹ Stop", "zh": "⏹ 停止"},
    "chat.ops": {"en": "Memory operations (every turn)", "zh": "记忆操作（每轮）"},
    "chat.retrieved": {"en": "Memories the last answer retrieved (score; RMM: kept by the reranker; cited)",
                       "zh": "上一个回答检索到的记忆（得分；RMM：重排器保留；被引用）"},
    "chat.bank_table": {"en": "The whole bank", "zh": "整个记忆库"},
    "chat.trace": {"en": "MemAgent: the memory after each chunk", "zh": "MemAgent：每块之后的记忆"},
    "tab.export": {"en": "Export", "zh": "导出"},
    "ex.intro": {"en": "Export a run's checkpoint as its LoRA adapter or merged into a full model, in the dtype you "
                       "pick (`memfactory export`); then load it and run one greedy prompt to see that it loads.",
                 "zh": "将运行的检查点导出为 LoRA 适配器或合并为完整模型，并选择数据类型（`memfactory export`）；"
                       "然后加载并运行一个贪心提示，确认可以加载。"},
    "ex.run": {"en": "Run", "zh": "运行"},
    "ex.checkpoint": {"en": "Checkpoint", "zh": "检查点"},
    "ex.mode": {"en": "Export as", "zh": "导出为"},
    "ex.dtype": {"en": "Weights dtype", "zh": "权重数据类型"},
    "ex.out": {"en": "Output folder (empty = <run>/export/…)", "zh": "输出目录（空 = <运行>/export/…）"},
    "ex.force": {"en": "Replace an existing output folder", "zh": "覆盖已存在的输出目录"},
    "ex.command": {"en": "Equivalent command", "zh": "等效命令"},
    "ex.export": {"en": "📦 Export", "zh": "📦 导出"},
    "ex.files": {"en": "Exported files", "zh": "导出的文件"},
    "ex.prompt": {"en": "Test prompt", "zh": "测试提示"},
    "ex.test": {"en": "🧪 Load and test", "zh": "🧪 加载并测试"},
    "empty_registry": {
        "en": "⚠️ Nothing is registered yet for: {kinds}. Install or import the packages that register "
              "agents, modules, environments, rewards and backends, then restart the UI.",
        "zh": "⚠️ 以下类别尚未注册任何组件：{kinds}。请安装或导入注册智能体、模块、环境、奖励和后端的包，然后重启界面。",
    },
    "section.preset": {"en": "### Preset", "zh": "### 预设"},
    "section.agent": {"en": "### Agent and memory modules", "zh": "### 智能体与记忆模块"},
    "section.model": {"en": "### Model", "zh": "### 模型"},
    "section.env": {"en": "### Environment and data", "zh": "### 环境与数据"},
    "section.rewards": {"en": "### Rewards", "zh": "### 奖励"},
    "section.trainer": {"en": "Trainer (GRPO)", "zh": "训练器 (GRPO)"},
    "section.logging": {"en": "Logging", "zh": "日志"},
    "section.agent_options": {"en": "Agent options", "zh": "智能体选项"},
    "section.model_options": {"en": "More model options", "zh": "更多模型选项"},
    "preset_name": {"en": "Preset name", "zh": "预设名称"},
    "description": {"en": "Description", "zh": "描述"},
    "agent": {"en": "Agent", "zh": "智能体"},
    "backend": {"en": "Model backend", "zh": "模型后端"},
    "model_path": {"en": "Model path", "zh": "模型路径"},
    "env": {"en": "Environment", "zh": "环境"},
    "yaml": {"en": "Preset (YAML)", "zh": "预设 (YAML)"},
    "cli": {"en": "Equivalent command", "zh": "等效命令"},
    "problems": {"en": "Validation", "zh": "校验"},
    "save_name": {"en": "Save as (file name)", "zh": "另存为（文件名）"},
    "overwrite": {"en": "Overwrite an existing preset", "zh": "覆盖已存在的预设"},
    "save": {"en": "💾 Save preset", "zh": "💾 保存预设"},
    "load_choice": {"en": "Saved presets", "zh": "已保存的预设"},
    "load": {"en": "📂 Load", "zh": "📂 加载"},
    "refresh": {"en": "🔄 Refresh", "zh": "🔄 刷新"},
    "download": {"en": "⬇️ Download YAML", "zh": "⬇️ 下载 YAML"},
    "reward_weight": {"en": "weight", "zh": "权重"},
    "valid": {"en": "✅ The preset is valid.", "zh": "✅ 预设有效。"},
    "invalid": {"en": "❌ **Invalid preset**", "zh": "❌ **预设无效**"},
    "runs_table": {"en": "Runs", "zh": "运行"},
    "run_details": {"en": "One run in detail", "zh": "单个运行详情"},
    "runs_select": {"en": "Runs to compare", "zh": "对比的运行"},
    "runs_empty": {"en": "No runs yet. Start one from the Train tab or `memfactory train <preset>`.",
                   "zh": "暂无运行记录。请在训练页或用 `memfactory train <预设>` 启动。"},
    "runs_manage": {"en": "Run to open or delete", "zh": "要打开或删除的运行"},
    "runs_open": {"en": "📂 Open preset in Assemble", "zh": "📂 在组装页打开预设"},
    "runs_delete_confirm": {"en": "I understand this deletes the run and its files",
                            "zh": "我了解这会删除该运行及其文件"},
    "runs_delete": {"en": "🗑️ Delete run", "zh": "🗑️ 删除运行"},
    "tab.train": {"en": "Train", "zh": "训练"},
    "train_preset": {"en": "Preset to train", "zh": "训练预设"},
    "train_start": {"en": "▶️ Start training", "zh": "▶️ 开始训练"},
    "train_abort": {"en": "⏹️ Abort", "zh": "⏹️ 中止"},
    "train_resume": {"en": "⏯️ Resume from last checkpoint", "zh": "⏯️ 从最近检查点继续"},
    "train_run": {"en": "Run shown", "zh": "显示的运行"},
    "train_samples": {"en": "Sample trajectories", "zh": "样本轨迹"},
    "train_sample_step": {"en": "Step", "zh": "步"},
    "train_sample_index": {"en": "Trajectory", "zh": "轨迹"},
    "train_log": {"en": "Log (stdout.log)", "zh": "日志 (stdout.log)"},
    "train_none": {"en": "No run selected. Start one, or pick a run above.", "zh": "未选择运行。请开始训练或在上方选择一个运行。"},
    "train_step": {"en": "step", "zh": "步"},
    "train_elapsed": {"en": "elapsed", "zh": "已用"},
    "train_eta": {"en": "ETA", "zh": "预计剩余"},
    "status.created": {"en": "created", "zh": "已创建"},
    "status.running": {"en": "running", "zh": "运行中"},
    "status.finished": {"en": "finished", "zh": "已完成"},
    "status.failed": {"en": "failed", "zh": "失败"},
    "status.aborted": {"en": "aborted", "zh": "已中止"},
}


def t(key: str, lang: str = "en", **fmt: Any) -> str:
    """The label ``key`` in ``lang`` (English when missing; the key itself when unknown)."""
    entry = TEXT.get(key)
    text = key if entry is None else entry.get(lang) or entry["en"]
    return text.format(**fmt) if fmt else text


class Labels:
    """Remembers which component shows which text, so a locale switch can relabel them all."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[Any, dict[str, tuple[str, dict[str, Any]]]]] = {}

    def add(self, component: Any, key: str, attr: str = "label", **fmt: Any) -> Any:
        self._items.setdefault(id(component), (component, {}))[1][attr] = (key, fmt)
        return component

    @property
    def components(self) -> list[Any]:
        return [component for component, _ in self._items.values()]

    def texts(self, lang: str) -> list[dict[str, str]]:
        """Per component (in ``components`` order): attribute -> text in ``lang``."""
        return [{attr: t(key, lang, **fmt) for attr, (key, fmt) in attrs.items()} for _, attrs in self._items.values()]

    def updates(self, lang: str) -> list[Any]:
        import gradio as gr

        return [gr.update(**texts) for texts in self.texts(lang)]
