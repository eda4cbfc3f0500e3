"""The piccolo-admin site, built once at import: every table, grouped for sales and content."""

from __future__ import annotations

from piccolo.apps.user.tables import BaseUser
from piccolo_admin.endpoints import TableConfig, create_admin
from piccolo_api.crud.endpoints import OrderBy
from piccolo_api.crud.hooks import Hook, HookType
from piccolo_api.crud.validators import Validators
from starlette.exceptions import HTTPException
from piccolo_api.session_auth.tables import SessionsBase

from piccolo_api.media.local import LocalMediaStorage

from admin import webhooks
from admin.forms import api_key, chains, lead_rights, staff
from admin.forms import ebooks as ebook_forms, scoring as scoring_forms
from admin.roles import RoleGuard
from admin.tables import HotAlert, StaffRole, WebhookDelivery, WebhookEndpoint, WeeklyReport
from content.tables import (
    Chain,
    ChainWait,
    Delivery,
    DownloadLink,
    Ebook,
    Enrollment,
    LandingPage,
    Notice,
    Offer,
    Step,
    Suppression,
)
from admin.desk.sales import record_admin_table_patch
from landing.outcomes import stamp_outcome_on_save
from landing.tables import ApiKey, Consent, Conversion, Event, Lead, LeadChange, Topic, TopicPreference, UrlTopic, Visitor
from scoring.tables import LeadAttribute, Score, ScoreHistory, ScoringModel, ScoringRule
from server.settings import get_settings
from server.tables import CaughtMail

def _read_only(piccolo_crud, request) -> None:
    raise HTTPException(status_code=405, detail="This table is a record: it cannot be edited here.")


def _made_by_form(piccolo_crud, request) -> None:
    raise HTTPException(status_code=405, detail="Make keys with the 'Create API key' form: it shows the key once.")


def _staff_by_form(piccolo_crud, request) -> None:
    raise HTTPException(status_code=405, detail="Set roles with the 'Add a staff user' and 'Change a staff user' forms.")


def _patch_only(piccolo_crud, request) -> None:
    # piccolo_api runs its hooks on PATCH (what the admin sends), not on PUT: the checks that
    # keep a live chain's letters valid must not be skipped by a hand-made PUT.
    raise HTTPException(status_code=405, detail="Edit this table with PATCH, as the admin does.")


READ_ONLY = Validators(post_single=[_read_only], put_single=[_read_only], patch_single=[_read_only],
                       delete_single=[_read_only], delete_all=[_read_only])
"""For tables that record what happened (caught mail): editing them would rewrite history."""

def _media(column, folder: str, extensions: tuple[str, ...]) -> LocalMediaStorage:
    path = get_settings().data_dir / "media" / folder
    path.mkdir(parents=True, exist_ok=True)
    return LocalMediaStorage(column=column, media_path=str(path), allowed_extensions=extensions)


IMAGES = ("jpg", "jpeg", "png", "webp", "gif")
COVERS = _media(Ebook.cover_image, "covers/ebooks", IMAGES)
PAGE_COVERS = _media(LandingPage.cover_image, "covers/pages", IMAGES)
PDFS = _media(Ebook.uploaded_pdf, "pdfs", ("pdf",))

TABLES = [
    TableConfig(Lead, menu_group="Sales", visible_columns=[Lead.id, Lead.email, Lead.first_name, Lead.company, Lead.stage, Lead.source, Lead.created_at],
                visible_filters=[Lead.email, Lead.stage, Lead.source, Lead.owner],
                order_by=[OrderBy(Lead.created_at, ascending=False)],
                hooks=[Hook(HookType.pre_patch, record_admin_table_patch), Hook(HookType.pre_save, stamp_outcome_on_save)],
                # Stage and owner changes are recorded by the PATCH hook; piccolo_api runs no hooks on PUT.
                validators=Validators(put_single=[_patch_only])),
    TableConfig(LeadChange, menu_group="Sales", visible_columns=[LeadChange.id, LeadChange.lead, LeadChange.field, LeadChange.old_value,
                                                                 LeadChange.new_value, LeadChange.changed_by_name, LeadChange.via,
                                                                 LeadChange.changed_at],
                visible_filters=[LeadChange.lead, LeadChange.field, LeadChange.via], order_by=[OrderBy(LeadChange.changed_at, ascending=False)],
                validators=READ_ONLY),
    TableConfig(Score, menu_group="Sales", visible_columns=[Score.lead, Score.topic, Score.combined, Score.hot, Score.rule_points,
                                                            Score.model_probability, Score.model_version, Score.computed_at],
                visible_filters=[Score.topic, Score.hot, Score.model_version], order_by=[OrderBy(Score.combined, ascending=False)]),
    TableConfig(Event, menu_group="Sales", visible_columns=[Event.id, Event.type, Event.lead, Event.topic, Event.occurred_at],
                visible_filters=[Event.type, Event.lead, Event.topic], order_by=[OrderBy(Event.occurred_at, ascending=False)]),
    TableConfig(Conversion, menu_group="Sales", visible_columns=[Conversion.id, Conversion.lead, Conversion.kind, Conversion.value,
                                                                 Conversion.occurred_at],
                visible_filters=[Conversion.lead, Conversion.kind], order_by=[OrderBy(Conversion.occurred_at, ascending=False)]),
    TableConfig(Consent, menu_group="Sales", visible_columns=[Consent.lead, Consent.version, Consent.page_url, Consent.given_at],
                visible_filters=[Consent.lead, Consent.version], order_by=[OrderBy(Consent.given_at, ascending=False)]),
    TableConfig(Visitor, menu_group="Sales", visible_columns=[Visitor.id, Visitor.lead, Visitor.first_seen_at, Visitor.last_seen_at],
                visible_filters=[Visitor.lead], order_by=[OrderBy(Visitor.last_seen_at, ascending=False)]),
    TableConfig(Topic, menu_group="Content", visible_columns=[Topic.id, Topic.name, Topic.slug, Topic.hot_threshold, Topic.created_at],
                order_by=[OrderBy(Topic.name)]),
    TableConfig(Ebook, menu_group="Content", visible_columns=[Ebook.id, Ebook.title, Ebook.topic, Ebook.leads_waiting, Ebook.render_error, Ebook.rendered_at, Ebook.updated_at],
                media_storage=[COVERS, PDFS]),
    TableConfig(LandingPage, menu_group="Content", visible_columns=[LandingPage.id, LandingPage.slug, LandingPage.title, LandingPage.ebook, LandingPage.double_opt_in, LandingPage.published],
                media_storage=[PAGE_COVERS]),
    TableConfig(UrlTopic, menu_group="Content", visible_columns=[UrlTopic.id, UrlTopic.pattern, UrlTopic.topic, UrlTopic.event_type, UrlTopic.priority, UrlTopic.active]),
    TableConfig(Chain, menu_group="Content", visible_columns=[Chain.id, Chain.name, Chain.topic, Chain.status, Chain.starts_at, Chain.hot_threshold,
                                                            Chain.holdout_percent, Chain.is_fallback, Chain.check_error],
                hooks=[Hook(HookType.pre_patch, chains.guard_chain_patch), Hook(HookType.pre_save, chains.guard_chain_save)],
                validators=Validators(put_single=[_patch_only])),
    TableConfig(Step, menu_group="Content", visible_columns=[Step.chain, Step.position, Step.kind, Step.delay_minutes, Step.subject, Step.subject_b],
                visible_filters=[Step.chain],
                hooks=[Hook(HookType.pre_patch, chains.guard_step_patch), Hook(HookType.pre_save, chains.guard_step_save)],
                validators=Validators(delete_single=[chains.refuse_removing_from_live_chain], put_single=[_patch_only])),
    TableConfig(ChainWait, menu_group="Content", visible_columns=[ChainWait.id, ChainWait.lead, ChainWait.topic, ChainWait.since],
                visible_filters=[ChainWait.topic], validators=READ_ONLY),
    TableConfig(Offer, menu_group="Content", visible_columns=[Offer.chain, Offer.kind, Offer.subject],
                hooks=[Hook(HookType.pre_patch, chains.guard_offer_patch)],
                validators=Validators(delete_single=[chains.refuse_removing_from_live_chain], put_single=[_patch_only])),
    TableConfig(Enrollment, menu_group="Mail", visible_columns=[Enrollment.id, Enrollment.lead, Enrollment.chain, Enrollment.group, Enrollment.status, Enrollment.next_position, Enrollment.due_at],
                visible_filters=[Enrollment.chain, Enrollment.status, Enrollment.group]),
    TableConfig(Delivery, menu_group="Mail", visible_columns=[Delivery.id, Delivery.enrollment, Delivery.step, Delivery.status, Delivery.variant, Delivery.to_address, Delivery.subject, Delivery.sent_at, Delivery.opened_at, Delivery.clicked_at],
                visible_filters=[Delivery.status, Delivery.to_address], order_by=[OrderBy(Delivery.id, ascending=False)]),
    TableConfig(Suppression, menu_group="Mail", visible_columns=[Suppression.id, Suppression.reason, Suppression.detail, Suppression.created_at],
                visible_filters=[Suppression.reason], order_by=[OrderBy(Suppression.created_at, ascending=False)]),
    TableConfig(Notice, menu_group="Mail", visible_columns=[Notice.id, Notice.kind, Notice.lead, Notice.status, Notice.to_address, Notice.subject, Notice.sent_at],
                visible_filters=[Notice.kind, Notice.status], order_by=[OrderBy(Notice.id, ascending=False)]),
    TableConfig(DownloadLink, menu_group="Mail", visible_columns=[DownloadLink.id, DownloadLink.lead, DownloadLink.ebook, DownloadLink.downloads, DownloadLink.expires_at],
                order_by=[OrderBy(DownloadLink.id, ascending=False)], validators=READ_ONLY),
    TableConfig(TopicPreference, menu_group="Sales", visible_columns=[TopicPreference.lead, TopicPreference.topic, TopicPreference.subscribed, TopicPreference.updated_at]),
    TableConfig(CaughtMail, menu_group="Mail", visible_columns=[CaughtMail.id, CaughtMail.recipients, CaughtMail.subject, CaughtMail.received_at],
                visible_filters=[CaughtMail.recipients, CaughtMail.subject], order_by=[OrderBy(CaughtMail.received_at, ascending=False)],
                validators=READ_ONLY),
    TableConfig(ScoringRule, menu_group="Scoring", visible_columns=[ScoringRule.id, ScoringRule.name, ScoringRule.kind, ScoringRule.event_type,
                                                                    ScoringRule.topic, ScoringRule.points, ScoringRule.daily_cap,
                                                                    ScoringRule.half_life_days, ScoringRule.active]),
    TableConfig(ScoringModel, menu_group="Scoring", visible_columns=[ScoringModel.version, ScoringModel.algorithm, ScoringModel.active,
                                                                     ScoringModel.labels, ScoringModel.trained_at],
                order_by=[OrderBy(ScoringModel.trained_at, ascending=False)]),
    TableConfig(LeadAttribute, menu_group="Scoring", visible_columns=[LeadAttribute.name, LeadAttribute.kind, LeadAttribute.excluded,
                                                                      LeadAttribute.note]),
    TableConfig(ScoreHistory, menu_group="Scoring", visible_columns=[ScoreHistory.lead, ScoreHistory.topic, ScoreHistory.combined,
                                                                     ScoreHistory.computed_at],
                visible_filters=[ScoreHistory.lead, ScoreHistory.topic], order_by=[OrderBy(ScoreHistory.computed_at, ascending=False)],
                validators=READ_ONLY),
    TableConfig(ApiKey, menu_group="System", visible_columns=[ApiKey.id, ApiKey.name, ApiKey.prefix, ApiKey.scope, ApiKey.active, ApiKey.last_used_at],
                validators=Validators(post_single=[_made_by_form])),
    TableConfig(BaseUser, menu_group="System", visible_columns=[BaseUser.id, BaseUser.username, BaseUser.email, BaseUser.active,
                                                                BaseUser.superuser, BaseUser.last_login]),
    TableConfig(StaffRole, menu_group="System", visible_columns=[StaffRole.id, StaffRole.user, StaffRole.role, StaffRole.updated_at],
                validators=Validators(post_single=[_staff_by_form], put_single=[_staff_by_form], patch_single=[_staff_by_form])),
    TableConfig(WeeklyReport, menu_group="Sales", visible_columns=[WeeklyReport.week_start, WeeklyReport.status, WeeklyReport.recipients,
                                                                   WeeklyReport.attempts, WeeklyReport.sent_at, WeeklyReport.error],
                order_by=[OrderBy(WeeklyReport.week_start, ascending=False)],
                # An admin settles a week left `sending` (the relay's log decides): sent, or failed to send again.
                validators=Validators(post_single=[_read_only], delete_single=[_read_only], put_single=[_patch_only])),
    TableConfig(HotAlert, menu_group="Sales", visible_columns=[HotAlert.id, HotAlert.lead, HotAlert.topic, HotAlert.status,
                                                              HotAlert.to_address, HotAlert.subject, HotAlert.sent_at],
                visible_filters=[HotAlert.status, HotAlert.lead, HotAlert.topic], order_by=[OrderBy(HotAlert.id, ascending=False)],
                validators=READ_ONLY),
    TableConfig(WebhookEndpoint, menu_group="System", visible_columns=[WebhookEndpoint.id, WebhookEndpoint.name, WebhookEndpoint.url,
                                                                       WebhookEndpoint.events, WebhookEndpoint.active],
                hooks=[Hook(HookType.pre_save, webhooks.guard_endpoint_save), Hook(HookType.pre_patch, webhooks.guard_endpoint_patch)],
                validators=Validators(put_single=[webhooks.refuse_put])),
    TableConfig(WebhookDelivery, menu_group="System", visible_columns=[WebhookDelivery.id, WebhookDelivery.endpoint, WebhookDelivery.event_key,
                                                                       WebhookDelivery.status, WebhookDelivery.attempts, WebhookDelivery.response_code,
                                                                       WebhookDelivery.error, WebhookDelivery.next_attempt_at, WebhookDelivery.delivered_at],
                visible_filters=[WebhookDelivery.endpoint, WebhookDelivery.status, WebhookDelivery.lead],
                order_by=[OrderBy(WebhookDelivery.id, ascending=False)], validators=READ_ONLY),
]


def _describe(tables: list[TableConfig]) -> None:
    """Each table's docstring becomes the description piccolo-admin shows above its rows, so
    staff read what a table is for (the docstrings are written for people)."""
    for config in tables:
        meta = config.table_class._meta
        if not meta.help_text and config.table_class.__doc__:
            meta.help_text = " ".join(config.table_class.__doc__.split())


_describe(TABLES)

ADMIN_APP = create_admin(
    tables=TABLES,
    auth_table=BaseUser,
    session_table=SessionsBase,
    site_name="leadkiln",
    production=get_settings().public_url.startswith("https://"),
    forms=[api_key.FORM, lead_rights.EXPORT_FORM, lead_rights.ERASE_FORM, chains.CHAIN_FORM, chains.PREVIEW_FORM, chains.TEST_FORM,
           ebook_forms.RENDER_FORM, scoring_forms.TRAIN_FORM,
           staff.ADD_FORM, staff.CHANGE_FORM],
    sidebar_links={"Desk: hot leads": "/desk/hot", "Desk: dashboard": "/desk/dashboard", "Desk: chains": "/desk/chains",
                   "Desk: scoring": "/desk/scoring", "Landing pages": "/"},
)
"""piccolo-admin itself: login required for everything under /admin/."""

GUARDED_ADMIN = RoleGuard(ADMIN_APP)
"""What /admin/ serves: piccolo-admin behind the role policy (admin/roles.py)."""
