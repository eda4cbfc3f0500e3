from tests.integration.conftest import landing_form
from landing.tables import Lead

async def test_probe(client, catalog):
    token = await landing_form(client, "seo")
    for i, (q, fn) in enumerate([("?utm_source=" + "s" * 150, "Ria"), ("", "Ria\u0085x"), ("", "Ria\u2028x"), ("", "Ria\u200ex")]):
        r = await client.post(f"/l/seo{q}", data={"_csrf_token": token, "email": f"p{i}@example.com", "consent": "on", "first_name": fn})
        print(i, r.status_code, r.text[:200])
    print(await Lead.select(Lead.email, Lead.first_name, Lead.source))
